"""Events -> rows: `EventRecorder.handle` records each executor event as it happens.

Each event is one transaction, so a controller that dies mid-run leaves a true record (which
`StateStore.recover_aborted` later completes); op output goes straight to the op's log file.
What the recorder already wrote is not written again: a host's row is made once, and at the
end of a run only the hosts whose result differs from what their `HostFinished` wrote.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence

from fleet.errors import StateError
from fleet.events import (
    Event,
    HostFinished,
    OpFinished,
    OpNote,
    OpOutput,
    OpStarted,
    RunFinished,
    RunStarted,
)
from fleet.models import HostResult, OpResult, utcnow
from fleet.state.database import Database, require_run
from fleet.state.logs import OpLogs
from fleet.state.processes import Controller
from fleet.state.rows import CONTROLLER_HOST, sql_tail, sql_text, sql_time

# An op's whole row. On conflict the result wins, except that the store keeps what it already
# knows when the result leaves it out: where the op started, its log, its output tail.
_PUT_OP = """
INSERT INTO ops (run_id, host, op, position, status, exit_code, started_at, finished_at, error,
                 log, system_before, system_after, attempts, tail, switch_like)
VALUES (:run_id, :host, :op,
        (SELECT COALESCE(MAX(position) + 1, 0) FROM ops WHERE run_id = :run_id AND host = :host),
        :status, :exit_code, :started_at, :finished_at, :error, :log, :system_before,
        :system_after, :attempts, :tail, :switch_like)
ON CONFLICT (run_id, host, op) DO UPDATE SET
    status = excluded.status, exit_code = excluded.exit_code,
    started_at = COALESCE(excluded.started_at, started_at), finished_at = excluded.finished_at,
    error = excluded.error, log = COALESCE(excluded.log, log),
    system_before = excluded.system_before, system_after = excluded.system_after,
    attempts = excluded.attempts, tail = IIF(excluded.tail = '', tail, excluded.tail),
    switch_like = excluded.switch_like
"""

_START_OP = """
INSERT INTO ops (run_id, host, op, position, status, started_at, attempts, tail, switch_like)
VALUES (:run_id, :host, :op,
        (SELECT COALESCE(MAX(position) + 1, 0) FROM ops WHERE run_id = :run_id AND host = :host),
        'RUNNING', :started_at, :attempt, '', 0)
ON CONFLICT (run_id, host, op) DO UPDATE SET
    status = 'RUNNING', started_at = COALESCE(started_at, excluded.started_at),
    attempts = excluded.attempts
"""

_ENSURE_HOST = """
INSERT OR IGNORE INTO hosts (run_id, host, position, status, rolled_back)
VALUES (:run_id, :host,
        (SELECT COALESCE(MAX(position) + 1, 0) FROM hosts WHERE run_id = :run_id),
        'PENDING', 0)
"""


class EventRecorder:
    """Writes the executor's events into the database and the ops' output into their logs."""

    def __init__(self, db: Database, logs: OpLogs) -> None:
        self._db = db
        self._logs = logs
        self._hosts: set[tuple[str, str]] = set()  # (run_id, host) rows this recorder made
        self._finished: dict[tuple[str, str], HostResult] = {}  # what HostFinished wrote

    def handle(self, event: Event) -> None:
        """Record one executor event (an `EventBus` subscriber). Raises StateError."""
        try:
            self._record(event)
        except BaseException:  # its transaction was rolled back: what it wrote is not there
            self.forget(_run_id(event))
            raise

    def forget(self, run_id: str) -> None:
        """Drop what the recorder remembers of `run_id` (its run ended, or a write failed):
        the next event of that run (if any) writes its host rows in full again."""
        self._hosts = {key for key in self._hosts if key[0] != run_id}
        self._finished = {k: v for k, v in self._finished.items() if k[0] != run_id}

    def _record(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._run_started(event)
            case OpStarted():
                self._op_started(event)
            case OpOutput():
                self._logs.append(event.run_id, event.host, event.op, event.data)
            case OpNote():
                line = f"fleet: {event.message}\n".encode(errors="replace")
                self._logs.append(event.run_id, event.host, event.op, line)
            case OpFinished():
                self._op_finished(event)
            case HostFinished():
                self._host_finished(event)
            case RunFinished():
                self._run_finished(event)
            case _:  # OpSlow: the views show it; the record does not change
                pass

    def _run_started(self, event: RunStarted) -> None:
        run = event.run
        controller = Controller.of(event.pid or os.getpid())
        with self._db.transaction() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
                raise StateError(f"run {run.run_id} is already recorded in {self._db.path}")
            conn.execute(
                "INSERT INTO runs (run_id, pipeline, status, started_at, finished_at, retry_of,"
                " options, pid, hostname, pid_start) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.pipeline,
                    run.status.value,
                    sql_time(run.started_at or utcnow()),
                    sql_time(run.finished_at),
                    run.retry_of,
                    json.dumps(dict(run.options), default=str),
                    controller.pid,
                    controller.hostname,
                    controller.start,
                ),
            )
            for name, host in run.hosts.items():
                ops = host.ops or tuple(OpResult(op) for op in event.ops)
                self._put_host(conn, run.run_id, name, host, ops)
            defaults = tuple(OpResult(op) for op in event.controller_ops)
            for op in run.controller_ops or defaults:
                self._put_op(conn, run.run_id, None, op)

    def _op_started(self, event: OpStarted) -> None:
        with self._db.transaction() as conn:
            require_run(conn, event.run_id)
            if event.host is not None:
                self._ensure_host(conn, event.run_id, event.host)
                conn.execute(
                    "UPDATE hosts SET status = 'RUNNING'"
                    " WHERE run_id = ? AND host = ? AND status = 'PENDING'",
                    (event.run_id, event.host),
                )
            conn.execute(
                _START_OP,
                {
                    "run_id": event.run_id,
                    "host": event.host or CONTROLLER_HOST,
                    "op": event.op,
                    "started_at": sql_time(event.started_at),
                    "attempt": event.attempt,
                },
            )
        self._logs.open((event.run_id, event.host, event.op))

    def _op_finished(self, event: OpFinished) -> None:
        self._logs.close((event.run_id, event.host, event.result.op))
        with self._db.transaction() as conn:
            require_run(conn, event.run_id)
            if event.host is not None:
                self._ensure_host(conn, event.run_id, event.host)
            self._put_op(conn, event.run_id, event.host, event.result)

    def _host_finished(self, event: HostFinished) -> None:
        host = event.result
        self._logs.close_host(event.run_id, host.name)
        with self._db.transaction() as conn:
            require_run(conn, event.run_id)
            self._put_host(conn, event.run_id, host.name, host, host.ops)
        self._finished[(event.run_id, host.name)] = host

    def _run_finished(self, event: RunFinished) -> None:
        run = event.run
        self._logs.close_run(run.run_id)
        with self._db.transaction() as conn:
            require_run(conn, run.run_id)
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?",
                (run.status.value, sql_time(run.finished_at or utcnow()), run.run_id),
            )
            for name, host in run.hosts.items():
                if self._finished.get((run.run_id, name)) != host:
                    self._put_host(conn, run.run_id, name, host, host.ops)
            for op in run.controller_ops:
                self._put_op(conn, run.run_id, None, op)
            conn.execute("DELETE FROM host_locks WHERE run_id = ?", (run.run_id,))
        self._logs.forget_run(run.run_id)
        self.forget(run.run_id)

    def _ensure_host(self, conn: sqlite3.Connection, run_id: str, host: str) -> None:
        if (run_id, host) not in self._hosts:
            conn.execute(_ENSURE_HOST, {"run_id": run_id, "host": host})
            self._hosts.add((run_id, host))

    def _put_host(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        name: str,
        host: HostResult,
        ops: Sequence[OpResult],
    ) -> None:
        self._ensure_host(conn, run_id, name)
        conn.execute(
            "UPDATE hosts SET status = ?, failed_op = ?, rolled_back = ?"
            " WHERE run_id = ? AND host = ?",
            (host.status.value, host.failed_op, int(host.rolled_back), run_id, name),
        )
        for op in ops:
            self._put_op(conn, run_id, name, op)

    def _put_op(
        self, conn: sqlite3.Connection, run_id: str, host: str | None, result: OpResult
    ) -> None:
        conn.execute(
            _PUT_OP,
            {
                "run_id": run_id,
                "host": host or CONTROLLER_HOST,
                "op": result.op,
                "status": result.status.value,
                "exit_code": result.exit_code,
                "started_at": sql_time(result.started_at),
                "finished_at": sql_time(result.finished_at),
                "error": sql_text(result.error),
                "log": self._logs.ref(run_id, host, result),
                "system_before": result.system_before,
                "system_after": result.system_after,
                "attempts": result.attempts,
                "tail": sql_tail(result.tail),
                "switch_like": int(result.switch_like),
            },
        )


def _run_id(event: Event) -> str:
    if isinstance(event, RunStarted | RunFinished):
        return event.run.run_id
    return event.run_id
