"""The state store: every run, host and op fleet started, in SQLite, and the ops' output.

A state directory holds::

    fleet.db                               runs, hosts, ops, host_locks (SQLite, WAL mode)
    logs/<run_id>/<host>/<op>.log          an op's output, byte for byte as the host sent it
    logs/<run_id>/controller/<op>.log      a controller op's output

`StateStore.handle` subscribes to the executor's events and records each one as it happens, in
its own transaction; op output goes straight to the op's log file and is never held in memory.
So a controller that dies mid-run leaves a true record, and opening a store repairs it:
`recover_aborted` (called by every `StateStore(...)`) turns each RUNNING run of this machine
whose controller process is gone into ABORTED and frees its host locks. A process is gone when
its pid is dead, or when the pid now belongs to a process that started at another time.

Host locks make one run per host across every fleet process sharing the store (the CLI, the
dashboard, another terminal); a lock whose holder is gone is taken over.

Every failure to use the directory or the database (it cannot be created, is read-only, the
disk is full, the file is corrupt) is a `StateError` whose message is one line naming the path
and the cause; a failed event leaves none of its rows behind.
"""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

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
from fleet.models import (
    HostResult,
    HostStatus,
    OpResult,
    OpStatus,
    Run,
    RunStatus,
    is_valid_name,
    parse_iso,
    utcnow,
)

SCHEMA_VERSION = 1
DB_NAME = "fleet.db"
CONTROLLER_LOGS = "controller"  # the log directory of a run's controller ops
TAIL_BYTES = 8192  # the most of an op's output tail the store keeps
BUSY_TIMEOUT = 15.0  # seconds to wait for another process's write transaction

_CONTROLLER = ""  # the `host` of a controller op's row
_LogKey = tuple[str, str | None, str]  # (run_id, host, op)

_SCHEMA = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        retry_of TEXT,
        options TEXT NOT NULL,
        pid INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        pid_start INTEGER
    )""",
    "CREATE INDEX runs_by_start ON runs (started_at)",
    "CREATE INDEX runs_by_status ON runs (status)",
    """CREATE TABLE hosts (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        host TEXT NOT NULL,
        position INTEGER NOT NULL,
        status TEXT NOT NULL,
        failed_op TEXT,
        rolled_back INTEGER NOT NULL,
        PRIMARY KEY (run_id, host)
    ) WITHOUT ROWID""",
    """CREATE TABLE ops (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        host TEXT NOT NULL,
        op TEXT NOT NULL,
        position INTEGER NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        started_at TEXT,
        finished_at TEXT,
        error TEXT,
        log TEXT,
        system_before TEXT,
        system_after TEXT,
        attempts INTEGER NOT NULL,
        tail TEXT NOT NULL,
        switch_like INTEGER NOT NULL,
        PRIMARY KEY (run_id, host, op)
    ) WITHOUT ROWID""",
    """CREATE TABLE host_locks (
        host TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        pid INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        pid_start INTEGER,
        acquired_at TEXT NOT NULL
    )""",
)

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

_NEWEST_FIRST = "ORDER BY started_at DESC, rowid DESC"
_OP_COLUMNS = (
    "run_id, host, op, status, exit_code, started_at, finished_at, error, log, system_before,"
    " system_after, attempts, {tail}, switch_like"
)

# sqlite3 primary result codes (`sqlite_errorcode & 0xFF`)
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26


def new_run_id() -> str:
    """A run id that sorts by start time: `20261126-003012-3f9a` (UTC, then 4 random hex)."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


# ---------------------------------------------------------------------------------------------
# Processes: is the controller of a run (or the holder of a lock) still there?


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat, None if no such."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the command name (field 2) may hold spaces
    try:
        return fields[0], int(fields[19])  # fields 3 and 22
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """When `pid` started (field 22 of /proc/<pid>/stat), to tell a reused pid apart."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def process_alive(pid: int, start: int | None = None) -> bool:
    """True while `pid` runs (not a zombie) and, if `start` is known, is the same process."""
    if pid <= 0:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc: ask the kernel, without the start time
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, started = stat
    return state not in ("Z", "X", "x") and (start is None or start == started)


@dataclass(frozen=True)
class Controller:
    """A fleet process on some machine: the one driving a run, or holding a host lock."""

    hostname: str
    pid: int
    start: int | None

    @classmethod
    def of(cls, pid: int) -> Controller:
        return cls(socket.gethostname(), pid, process_start_time(pid))

    def can_signal(self, hostname: str) -> bool:
        """True when it runs on `hostname` (this machine) and we may signal it."""
        if self.hostname != hostname or not process_alive(self.pid, self.start):
            return False
        try:
            os.kill(self.pid, 0)
        except OSError:  # another user's process
            return False
        return True

    def cancel_run(self, hostname: str) -> bool:
        """SIGTERM this controller, which cancels its run as on Ctrl-C, if we can."""
        if not self.can_signal(hostname):
            return False
        try:
            os.kill(self.pid, signal.SIGTERM)
        except OSError:  # gone meanwhile
            return False
        return True

    def gone(self, hostname: str) -> bool:
        """True when it ran on `hostname` (this machine) and has exited. Others we cannot see."""
        return self.hostname == hostname and not process_alive(self.pid, self.start)


# ---------------------------------------------------------------------------------------------
# Rows <-> models


def _ts(value: datetime | None) -> str | None:
    """A fixed-width UTC timestamp, so that SQL compares them in time order."""
    return f"{value.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%fZ}" if value else None


def _text(text: str | None) -> str | None:
    """`text` as SQLite can store it: lone surrogates (undecodable output) become "?"."""
    return text.encode("utf-8", "replace").decode("utf-8") if text else text


def _tail(text: str) -> str:
    """The last TAIL_BYTES bytes of `text` (UTF-8), never cutting a character in two."""
    data = text.encode("utf-8", "replace")
    return data[-TAIL_BYTES:].decode("utf-8", "ignore")


def _op_from_row(row: Sequence[Any]) -> OpResult:
    (op, status, exit_code, started, finished, error, log, before, after, attempts, tail, sw) = row
    return OpResult(
        op=op,
        status=OpStatus(status),
        exit_code=exit_code,
        started_at=parse_iso(started),
        finished_at=parse_iso(finished),
        error=error,
        log=log,
        system_before=before,
        system_after=after,
        attempts=attempts,
        tail=tail,
        switch_like=bool(sw),
    )


def _assemble(
    runs: list[Sequence[Any]], hosts: list[Sequence[Any]], ops: list[Sequence[Any]]
) -> list[Run]:
    op_results: dict[tuple[str, str], list[OpResult]] = defaultdict(list)
    for row in ops:
        op_results[(row[0], row[1])].append(_op_from_row(row[2:]))
    host_results: dict[str, dict[str, HostResult]] = defaultdict(dict)
    for run_id, name, status, failed_op, rolled_back in hosts:
        host_results[run_id][name] = HostResult(
            name=name,
            status=HostStatus(status),
            failed_op=failed_op,
            ops=tuple(op_results.get((run_id, name), ())),
            rolled_back=bool(rolled_back),
        )
    return [
        Run(
            run_id=run_id,
            pipeline=pipeline,
            status=RunStatus(status),
            started_at=parse_iso(started),
            finished_at=parse_iso(finished),
            retry_of=retry_of,
            controller_ops=tuple(op_results.get((run_id, _CONTROLLER), ())),
            hosts=host_results.get(run_id, {}),
            options=json.loads(options),
        )
        for run_id, pipeline, status, started, finished, retry_of, options in runs
    ]


# ---------------------------------------------------------------------------------------------
# The store


class StateStore:
    """Runs, host locks and op logs in one state directory, shared by every fleet process.

    Opening it creates the directory and the schema if needed, then calls `recover_aborted`.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.db_path = self.state_dir / DB_NAME
        self.logs_dir = self.state_dir / "logs"
        self._hostname = socket.gethostname()
        self._me = Controller.of(os.getpid())
        self._logs: dict[_LogKey, io.BufferedWriter] = {}
        self._conn: sqlite3.Connection | None = None
        self._make_dir()
        self._conn = self._connect()
        try:
            self._migrate()
            self.recover_aborted()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the open logs and the database; the store cannot be used afterwards."""
        for key in list(self._logs):
            with suppress(OSError):  # a log that cannot be flushed already raised StateError
                self._logs.pop(key).close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- opening ----------------------------------------------------------------------------

    def _make_dir(self) -> None:
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise StateError(f"state directory {self.state_dir} is not a directory")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            cause = (exc.strerror or str(exc)).lower()
            raise StateError(f"cannot create state directory {self.state_dir}: {cause}") from exc

    def _connect(self) -> sqlite3.Connection:
        with self._sqlite_errors():
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            except BaseException:
                conn.close()
                raise
        return conn

    def _migrate(self) -> None:
        with self._transaction() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == SCHEMA_VERSION:
                return
            if version != 0:
                raise StateError(
                    f"state database {self.db_path} has schema version {version}, "
                    f"this fleet knows version {SCHEMA_VERSION}: use a newer fleet or --state-dir"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- errors and transactions ------------------------------------------------------------

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StateError(self._explain(exc)) from exc

    def _explain(self, exc: sqlite3.Error) -> str:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            cause = f"is corrupt ({exc}): move it away or use --state-dir"
            return f"state database {self.db_path} {cause}"
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return f"state database {self.db_path} is kept locked by another fleet process ({exc})"
        if code in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM, _SQLITE_IOERR, _SQLITE_FULL):
            problem = self._directory_problem()
            if problem:
                return problem
        if code == _SQLITE_FULL:
            return f"state directory {self.state_dir} is full ({exc})"
        return f"state database {self.db_path}: {exc}"

    def _directory_problem(self) -> str | None:
        """Why the state directory cannot be written, found by trying to; None if it can."""
        try:
            with tempfile.TemporaryFile(dir=self.state_dir):
                pass
            space = os.statvfs(self.state_dir)
        except OSError as exc:
            return self._os_problem(exc, None)
        if space.f_bfree == 0 or (space.f_bavail == 0 and os.geteuid() != 0):
            return f"state directory {self.state_dir} is full (no space left on device)"
        return None

    def _os_problem(self, exc: OSError, path: Path | None) -> str:
        where = f": cannot write {path}" if path else ""
        cause = (exc.strerror or str(exc)).lower()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"state directory {self.state_dir} is full ({cause}){where}"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"state directory {self.state_dir} is read-only ({cause}){where}"
        if path:
            return f"cannot write {path}: {cause}"
        return f"state directory {self.state_dir} cannot be written ({cause})"

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"state store {self.state_dir} is closed")
        return self._conn

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction: all of it is committed, or none (writes take the lock up front)."""
        conn = self._db()
        with self._sqlite_errors():
            conn.execute(begin)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def _require_run(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise StateError(f"unknown run {run_id}")

    # -- events -----------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Record one executor event (an `EventBus` subscriber). Raises StateError."""
        match event:
            case RunStarted():
                self._run_started(event)
            case OpStarted():
                self._op_started(event)
            case OpOutput():
                self._append(event.run_id, event.host, event.op, event.data)
            case OpNote():
                line = f"fleet: {event.message}\n".encode(errors="replace")
                self._append(event.run_id, event.host, event.op, line)
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
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
                raise StateError(f"run {run.run_id} is already recorded in {self.db_path}")
            conn.execute(
                "INSERT INTO runs (run_id, pipeline, status, started_at, finished_at, retry_of,"
                " options, pid, hostname, pid_start) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.pipeline,
                    run.status.value,
                    _ts(run.started_at or utcnow()),
                    _ts(run.finished_at),
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
        with self._transaction() as conn:
            self._require_run(conn, event.run_id)
            if event.host is not None:
                conn.execute(_ENSURE_HOST, {"run_id": event.run_id, "host": event.host})
                conn.execute(
                    "UPDATE hosts SET status = 'RUNNING'"
                    " WHERE run_id = ? AND host = ? AND status = 'PENDING'",
                    (event.run_id, event.host),
                )
            conn.execute(
                _START_OP,
                {
                    "run_id": event.run_id,
                    "host": event.host or _CONTROLLER,
                    "op": event.op,
                    "started_at": _ts(event.started_at),
                    "attempt": event.attempt,
                },
            )
        self._open_log((event.run_id, event.host, event.op))

    def _op_finished(self, event: OpFinished) -> None:
        self._close_log((event.run_id, event.host, event.result.op))
        with self._transaction() as conn:
            self._require_run(conn, event.run_id)
            if event.host is not None:
                conn.execute(_ENSURE_HOST, {"run_id": event.run_id, "host": event.host})
            self._put_op(conn, event.run_id, event.host, event.result)

    def _host_finished(self, event: HostFinished) -> None:
        host = event.result
        for key in [k for k in self._logs if k[0] == event.run_id and k[1] == host.name]:
            self._close_log(key)
        with self._transaction() as conn:
            self._require_run(conn, event.run_id)
            self._put_host(conn, event.run_id, host.name, host, host.ops)

    def _run_finished(self, event: RunFinished) -> None:
        run = event.run
        for key in [k for k in self._logs if k[0] == run.run_id]:
            self._close_log(key)
        with self._transaction() as conn:
            self._require_run(conn, run.run_id)
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?",
                (run.status.value, _ts(run.finished_at or utcnow()), run.run_id),
            )
            for name, host in run.hosts.items():
                self._put_host(conn, run.run_id, name, host, host.ops)
            for op in run.controller_ops:
                self._put_op(conn, run.run_id, None, op)
            conn.execute("DELETE FROM host_locks WHERE run_id = ?", (run.run_id,))

    def _put_host(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        name: str,
        host: HostResult,
        ops: Sequence[OpResult],
    ) -> None:
        conn.execute(_ENSURE_HOST, {"run_id": run_id, "host": name})
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
                "host": host or _CONTROLLER,
                "op": result.op,
                "status": result.status.value,
                "exit_code": result.exit_code,
                "started_at": _ts(result.started_at),
                "finished_at": _ts(result.finished_at),
                "error": _text(result.error),
                "log": self._log_ref(run_id, host, result),
                "system_before": result.system_before,
                "system_after": result.system_after,
                "attempts": result.attempts,
                "tail": _tail(result.tail),
                "switch_like": int(result.switch_like),
            },
        )

    # -- logs -------------------------------------------------------------------------------

    def log_path(self, run_id: str, host: str | None, op: str) -> Path:
        """Where an op's output is kept; `host` None (or "") for a controller op."""
        for kind, name in (("run id", run_id), ("host", host or CONTROLLER_LOGS), ("op", op)):
            if not is_valid_name(name):
                raise StateError(f"invalid {kind} {name!r}: not a log name")
        return self.logs_dir / run_id / (host or CONTROLLER_LOGS) / f"{op}.log"

    def read_log(self, run_id: str, host: str | None, op: str, *, last: int | None = None) -> bytes:
        """An op's output (only its `last` bytes if given); b"" for an op that wrote none.

        To stream a large log, open `log_path(...)` instead."""
        path = self.log_path(run_id, host, op)
        try:
            with path.open("rb") as log:
                if last is not None:
                    log.seek(max(0, log.seek(0, os.SEEK_END) - max(last, 0)))
                return log.read()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from exc
        with self._transaction("BEGIN") as conn:
            self._require_run(conn, run_id)
            known = conn.execute(
                "SELECT 1 FROM ops WHERE run_id = ? AND host = ? AND op = ?",
                (run_id, host or _CONTROLLER, op),
            ).fetchone()
        if known is None:
            raise StateError(f"run {run_id} has no op {op} on {host or 'the controller'}")
        return b""

    def _log_ref(self, run_id: str, host: str | None, result: OpResult) -> str | None:
        """The absolute log path to record: the result's (relative to the state directory), or
        the store's own log when the op wrote one."""
        if result.log:
            return str(self.state_dir / result.log)  # an absolute `log` stays as it is
        path = self.log_path(run_id, host, result.op)
        return str(path) if path.exists() else None

    def _open_log(self, key: _LogKey) -> None:
        if key in self._logs:  # a retry: its attempts share one log
            return
        path = self.log_path(*key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._logs[key] = path.open("ab")
        except OSError as exc:
            raise StateError(self._os_problem(exc, path)) from exc

    def _append(self, run_id: str, host: str | None, op: str, data: bytes) -> None:
        key = (run_id, host, op)
        log = self._logs.get(key)
        try:
            if log is not None:
                log.write(data)
                log.flush()  # readers in other processes (dashboard, `fleet logs -f`) see it now
                return
            path = self.log_path(*key)  # a note before the op started or after it finished
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as once:
                once.write(data)
        except OSError as exc:
            raise StateError(self._os_problem(exc, self.log_path(*key))) from exc

    def _close_log(self, key: _LogKey) -> None:
        log = self._logs.pop(key, None)
        if log is None:
            return
        try:
            log.close()
        except OSError as exc:
            raise StateError(self._os_problem(exc, self.log_path(*key))) from exc

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
        selected = f"SELECT run_id FROM runs WHERE {where} {_NEWEST_FIRST} LIMIT ?"
        args = (*params, limit)
        op_columns = _OP_COLUMNS.format(tail="tail" if tails else "''")
        with self._transaction("BEGIN") as conn:  # one snapshot for the three queries
            runs = conn.execute(
                "SELECT run_id, pipeline, status, started_at, finished_at, retry_of, options"
                f" FROM runs WHERE {where} {_NEWEST_FIRST} LIMIT ?",
                args,
            ).fetchall()
            hosts = conn.execute(
                "SELECT run_id, host, status, failed_op, rolled_back FROM hosts"
                f" WHERE run_id IN ({selected}) ORDER BY position",
                args,
            ).fetchall()
            ops = conn.execute(
                f"SELECT {op_columns} FROM ops WHERE run_id IN ({selected}) ORDER BY position",
                args,
            ).fetchall()
        return _assemble(runs, hosts, ops)

    def run_controller(self, run_id: str) -> Controller | None:
        """The fleet process that drives (or drove) `run_id`, as recorded at its start."""
        with self._transaction("BEGIN") as conn:
            row = conn.execute(
                "SELECT hostname, pid, pid_start FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return Controller(row[0], row[1], row[2]) if row else None

    def resolve_run_id(self, prefix: str) -> str:
        """The one run id that is `prefix` or starts with it."""
        if not prefix:
            raise StateError("no run id given")
        with self._transaction("BEGIN") as conn:
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
        with self._transaction() as conn:
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
                    (host, run_id, me.pid, me.hostname, me.start, _ts(utcnow())),
                )
        return refused

    def _lock_held(self, hostname: str, pid: int, start: int | None, status: str | None) -> bool:
        """A lock still counts while its run is not finished and its process is there."""
        if status is not None and status != RunStatus.RUNNING.value:
            return False
        return not Controller(hostname, pid, start).gone(self._hostname)

    def release_hosts(self, run_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM host_locks WHERE run_id = ?", (run_id,))

    def locked_hosts(self) -> dict[str, str]:
        """{host: run_id} for every lock recorded (some may belong to gone processes)."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute("SELECT host, run_id FROM host_locks ORDER BY host").fetchall()
        return {host: run_id for host, run_id in rows}

    # -- maintenance ------------------------------------------------------------------------

    def recover_aborted(self) -> list[str]:
        """Mark ABORTED every RUNNING run of this machine whose controller process is gone.

        Its unfinished ops become CANCELLED, its unfinished hosts CANCELLED, its host locks
        are freed, and so are the locks of gone processes that never recorded a run. Runs of
        other machines are left alone. Returns the aborted run ids."""
        aborted: list[str] = []
        with self._transaction() as conn:
            running = conn.execute(
                "SELECT run_id, hostname, pid, pid_start FROM runs WHERE status = 'RUNNING'"
            ).fetchall()
            now = _ts(utcnow())
            for run_id, hostname, pid, start in running:
                if not Controller(hostname, pid, start).gone(self._hostname):
                    continue
                conn.execute(
                    "UPDATE runs SET status = 'ABORTED', finished_at = ? WHERE run_id = ?",
                    (now, run_id),
                )
                conn.execute(
                    "UPDATE ops SET status = 'CANCELLED', error = ?,"
                    " finished_at = IIF(status = 'RUNNING', ?, finished_at)"
                    " WHERE run_id = ? AND status IN ('PENDING', 'RUNNING')",
                    (f"aborted: controller process {pid} died", now, run_id),
                )
                conn.execute(
                    "UPDATE hosts SET status = 'CANCELLED'"
                    " WHERE run_id = ? AND status IN ('PENDING', 'RUNNING')",
                    (run_id,),
                )
                conn.execute("DELETE FROM host_locks WHERE run_id = ?", (run_id,))
                aborted.append(run_id)
            stale = conn.execute(
                "SELECT l.host, l.hostname, l.pid, l.pid_start, r.status"
                " FROM host_locks AS l LEFT JOIN runs AS r USING (run_id)"
            ).fetchall()
            for host, *holder in stale:
                if not self._lock_held(*holder):
                    conn.execute("DELETE FROM host_locks WHERE host = ?", (host,))
        return aborted

    def prune(self, older_than: timedelta) -> int:
        """Delete the finished runs that ended more than `older_than` ago, with their logs."""
        cutoff = _ts(utcnow() - older_than)
        with self._transaction() as conn:
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
