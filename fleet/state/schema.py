"""The schema of fleet.db (runs, hosts, ops, host_locks) and its migration.

`PRAGMA user_version` holds the schema version: 0 is a new database, which gets the schema;
a version this fleet does not know is refused with a one-line StateError.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fleet.errors import StateError

SCHEMA_VERSION = 1

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


def migrate(conn: sqlite3.Connection, db_path: Path) -> None:
    """Bring the database to SCHEMA_VERSION, within the caller's transaction."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    if version != 0:
        raise StateError(
            f"state database {db_path} has schema version {version}, "
            f"this fleet knows version {SCHEMA_VERSION}: use a newer fleet or --state-dir"
        )
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
