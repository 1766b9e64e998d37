"""StateStore: what the rest of fleet opens to record runs and to read them back.

It records the executor's events (through `EventRecorder`), reads runs and op logs, locks
hosts for a run, turns the RUNNING runs of dead controllers into ABORTED (and, on request, a
run of this process that stopped without recording its end), and prunes old runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType

from fleet.errors import StateError
from fleet.events import Event
from fleet.models import Run, RunStatus, utcnow
from fleet.state.database import Database, require_run
from fleet.state.logs import OpLogs
from fleet.state.processes import Controller
from fleet.state.recorder import EventRecorder
from fleet.state.rows import CONTROLLER_HOST, assemble_runs, select_runs, sql_time


class StateStore:
    """Runs, host locks and op logs in one state directory, shared by every fleet process.

    Opening it creates the directory and the schema if needed, then calls `recover_aborted`.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).absolute()
        self._hostname = socket.gethostname()
        self._me = Controller.of(os.getpid())
        self._logs = OpLogs(self.state_dir)
        self._db = Database(self.state_dir)
        self._recorder = EventRecorder(self._db, self._logs)
        self.db_path = self._db.path
        self.logs_dir = self._logs.dir
        try:
            self.recover_aborted()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the open logs and the database; the store cannot be used afterwards."""
        self._logs.close_all()
        self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def handle(self, event: Event) -> None:
        """Record one executor event (an `EventBus` subscriber). Raises StateError."""
        self._recorder.handle(event)

    # -- logs -------------------------------------------------------------------------------

    def log_path(self, run_id: str, host: str | None, op: str) -> Path:
        """Where an op's output is kept; `host` None (or "") for a controller op."""
        return self._logs.path(run_id, host, op)

    def read_log(self, run_id: str, host: str | None, op: str, *, last: int | None = None) -> bytes:
        """An op's output (only its `last` bytes if given); b"" for an op that wrote none.

        To stream a large log, open `log_path(...)` instead."""
        data = self._logs.read(run_id, host, op, last)
        if data is not None:
            return data
        with self._db.transaction("BEGIN") as conn:
            require_run(conn, run_id)
            known = conn.execute(
                "SELECT 1 FROM ops WHERE run_id = ? AND host = ? AND op = ?",
                (run_id, host or CONTROLLER_HOST, op),
            ).fetchone()
        if known is None:
            raise StateError(f"run {run_id} has no op {op} on {host or 'the controller'}")
        return b""

    # -- reads ------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        """A run with every host (in order) and every op, as recorded so far."""
        runs = self._load_runs("run_id = ?", (run_id,), 1)
        if not runs:
            raise StateError(f"unknown run {run_id}")
        return runs[0]

    def latest_run(self) -> Run | None:
        runs = self._load_runs("1", (), 1)
        return runs[0] if runs else None

    def list_runs(self, limit: int, *, tails: bool = False) -> list[Run]:
        """The newest `limit` runs, newest first, with hosts and ops; op tails only if asked."""
        return self._load_runs("1", (), max(limit, 0), tails=tails)

    def _load_runs(
        self, where: str, params: Sequence[object], limit: int, *, tails: bool = True
    ) -> list[Run]:
        with self._db.transaction("BEGIN") as conn:  # one snapshot for the three queries
            rows = select_runs(conn, where, params, limit, tails=tails)
        return assemble_runs(*rows)

    def run_controller(self, run_id: str) -> Controller | None:
        """The fleet process that drives (or drove) `run_id`, as recorded at its start."""
        with self._db.transaction("BEGIN") as conn:
            row = conn.execute(
                "SELECT hostname, pid, pid_start FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return Controller(row[0], row[1], row[2]) if row else None

    def resolve_run_id(self, prefix: str) -> str:
        """The one run id that is `prefix` or starts with it."""
        if not prefix:
            raise StateError("no run id given")
        with self._db.transaction("BEGIN") as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (prefix,)).fetchone():
                return prefix
            matches: list[str] = [
                row[0]
                for row in conn.execute(
                    "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id"
                    " LIMIT 6",
                    (len(prefix), prefix),
                )
            ]
        if not matches:
            raise StateError(f"unknown run {prefix}")
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise StateError(f"run id {prefix} is ambiguous: it matches {shown}")
        return matches[0]

    # -- host locks -------------------------------------------------------------------------

    def acquire_hosts(self, run_id: str, hosts: Sequence[str]) -> dict[str, str]:
        """Lock `hosts` for `run_id`, taking over locks whose holder is gone.

        Returns {host: run_id holding it} for the hosts that stay locked by another run."""
        refused: dict[str, str] = {}
        me = self._me
        with self._db.transaction() as conn:
            for host in dict.fromkeys(hosts):
                row = conn.execute(
                    "SELECT l.run_id, l.hostname, l.pid, l.pid_start, r.status"
                    " FROM host_locks AS l LEFT JOIN runs AS r USING (run_id) WHERE l.host = ?",
                    (host,),
                ).fetchone()
                if row is not None and row[0] != run_id and self._lock_held(*row[1:]):
                    refused[host] = row[0]
                    continue
                conn.execute(
                    "INSERT OR REPLACE INTO host_locks"
                    " (host, run_id, pid, hostname, pid_start, acquired_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (host, run_id, me.pid, me.hostname, me.start, sql_time(utcnow())),
                )
        return refused

    def _lock_held(self, hostname: str, pid: int, start: int | None, status: str | None) -> bool:
        """A lock still counts while its run is not finished and its process is there."""
        if status is not None and status != RunStatus.RUNNING.value:
            return False
        return not Controller(hostname, pid, start).gone(self._hostname)

    def locked_hosts(self) -> dict[str, str]:
        """{host: run_id} for every lock recorded (some may belong to gone processes)."""
        with self._db.transaction("BEGIN") as conn:
            rows = conn.execute("SELECT host, run_id FROM host_locks ORDER BY host").fetchall()
        return {host: run_id for host, run_id in rows}

    # -- maintenance ------------------------------------------------------------------------

    def recover_aborted(self) -> list[str]:
        """Mark ABORTED every RUNNING run of this machine whose controller process is gone.

        Its unfinished ops become CANCELLED, its unfinished hosts CANCELLED, its host locks
        are freed, and so are the locks of gone processes that never recorded a run. Runs of
        other machines are left alone. Returns the aborted run ids."""
        aborted: list[str] = []
        with self._db.transaction() as conn:
            running = conn.execute(
                "SELECT run_id, hostname, pid, pid_start FROM runs WHERE status = 'RUNNING'"
            ).fetchall()
            now = sql_time(utcnow())
            for run_id, hostname, pid, start in running:
                if not Controller(hostname, pid, start).gone(self._hostname):
                    continue
                _abort(conn, run_id, now, f"aborted: controller process {pid} died")
                aborted.append(run_id)
            stale = conn.execute(
                "SELECT l.host, l.hostname, l.pid, l.pid_start, r.status"
                " FROM host_locks AS l LEFT JOIN runs AS r USING (run_id)"
            ).fetchall()
            for host, *holder in stale:
                if not self._lock_held(*holder):
                    conn.execute("DELETE FROM host_locks WHERE host = ?", (host,))
        return aborted

    def abort_run(self, run_id: str, reason: str) -> bool:
        """Mark ABORTED a RUNNING run of this process that stopped without recording its end
        (the store failed under it), as `recover_aborted` does for a run whose process died;
        the error of its unfinished ops is `aborted: REASON`. Its open logs are closed first.

        Returns False when there is nothing to do (not RUNNING, or another process's run).
        Raises StateError while the store cannot be written: try again later."""
        self._logs.abandon_run(run_id)
        self._recorder.forget(run_id)
        with self._db.transaction() as conn:
            mine = conn.execute(
                "SELECT 1 FROM runs WHERE run_id = ? AND status = 'RUNNING'"
                " AND hostname = ? AND pid = ?",
                (run_id, self._me.hostname, self._me.pid),
            ).fetchone()
            if mine is not None:
                _abort(conn, run_id, sql_time(utcnow()), f"aborted: {reason}")
        return mine is not None

    def prune(self, older_than: timedelta) -> int:
        """Delete the finished runs that ended more than `older_than` ago, with their logs."""
        cutoff = sql_time(utcnow() - older_than)
        with self._db.transaction() as conn:
            doomed = [
                row[0]
                for row in conn.execute(
                    "SELECT run_id FROM runs WHERE status != 'RUNNING'"
                    " AND COALESCE(finished_at, started_at) < ?",
                    (cutoff,),
                )
            ]
            for run_id in doomed:  # hosts and ops go with their run (ON DELETE CASCADE)
                conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
                conn.execute("DELETE FROM host_locks WHERE run_id = ?", (run_id,))
        for run_id in doomed:
            logs = self.logs_dir / run_id
            try:
                shutil.rmtree(logs)
            except FileNotFoundError:
                pass
            except OSError as exc:
                cause = (exc.strerror or str(exc)).lower()
                raise StateError(f"cannot delete the logs {logs}: {cause}") from exc
        return len(doomed)


def _abort(conn: sqlite3.Connection, run_id: str, now: str | None, error: str) -> None:
    """Within a transaction: `run_id` ABORTED, its unfinished ops and hosts CANCELLED (the ops
    with `error`), its host locks freed."""
    conn.execute(
        "UPDATE runs SET status = 'ABORTED', finished_at = ? WHERE run_id = ?", (now, run_id)
    )
    conn.execute(
        "UPDATE ops SET status = 'CANCELLED', error = ?,"
        " finished_at = IIF(status = 'RUNNING', ?, finished_at)"
        " WHERE run_id = ? AND status IN ('PENDING', 'RUNNING')",
        (error, now, run_id),
    )
    conn.execute(
        "UPDATE hosts SET status = 'CANCELLED'"
        " WHERE run_id = ? AND status IN ('PENDING', 'RUNNING')",
        (run_id,),
    )
    conn.execute("DELETE FROM host_locks WHERE run_id = ?", (run_id,))
