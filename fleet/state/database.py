"""fleet.db: opening it, one transaction at a time, and what each failure means.

Every failure to use the state directory or the database (it cannot be created, is read-only,
the disk is full, the file is corrupt) becomes a `StateError` whose message is one line naming
the path and the cause; a failed transaction leaves none of its rows behind.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from fleet.errors import StateError
from fleet.state.schema import migrate

DB_NAME = "fleet.db"
BUSY_TIMEOUT = 15.0  # seconds to wait for another process's write transaction

# sqlite3 primary result codes (`sqlite_errorcode & 0xFF`)
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26


class Database:
    """The SQLite database of a state directory, which opening creates (with the schema)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self._conn: sqlite3.Connection | None = None
        self._make_dir()
        self._conn = self._connect()
        try:
            with self.transaction() as conn:
                migrate(conn, self.path)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection; the database cannot be used afterwards."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
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
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            except BaseException:
                conn.close()
                raise
        return conn

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"state store {self.state_dir} is closed")
        return self._conn

    # -- errors -----------------------------------------------------------------------------

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
            return f"state database {self.path} {cause}"
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return f"state database {self.path} is kept locked by another fleet process ({exc})"
        if code in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM, _SQLITE_IOERR, _SQLITE_FULL):
            problem = self._directory_problem()
            if problem:
                return problem
        if code == _SQLITE_FULL:
            return f"state directory {self.state_dir} is full ({exc})"
        return f"state database {self.path}: {exc}"

    def _directory_problem(self) -> str | None:
        """Why the state directory cannot be written, found by trying to; None if it can."""
        try:
            with tempfile.TemporaryFile(dir=self.state_dir):
                pass
            space = os.statvfs(self.state_dir)
        except OSError as exc:
            return os_problem(self.state_dir, exc, None)
        if space.f_bfree == 0 or (space.f_bavail == 0 and os.geteuid() != 0):
            return f"state directory {self.state_dir} is full (no space left on device)"
        return None


def os_problem(state_dir: Path, exc: OSError, path: Path | None) -> str:
    """One line on why `path` (or the state directory itself, if None) cannot be written."""
    where = f": cannot write {path}" if path else ""
    cause = (exc.strerror or str(exc)).lower()
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"state directory {state_dir} is full ({cause}){where}"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"state directory {state_dir} is read-only ({cause}){where}"
    if path:
        return f"cannot write {path}: {cause}"
    return f"state directory {state_dir} cannot be written ({cause})"


def require_run(conn: sqlite3.Connection, run_id: str) -> None:
    """Raise StateError unless `run_id` is recorded."""
    if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
        raise StateError(f"unknown run {run_id}")
