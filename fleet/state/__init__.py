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
its pid is dead, or when the pid now belongs to a process that started at another time. A
process that lives on after its run stopped on a store error (the dashboard) repairs its own
record with `abort_run` once the store can be written again.

Host locks make one run per host across every fleet process sharing the store (the CLI, the
dashboard, another terminal); a lock whose holder is gone is taken over.

Every failure to use the directory or the database (it cannot be created, is read-only, the
disk is full, the file is corrupt) is a `StateError` whose message is one line naming the path
and the cause; a failed event leaves none of its rows behind.

The modules, one concept each:

    store.py       StateStore: reads, host locks, ABORTED recovery, prune
    recorder.py    EventRecorder: executor events -> rows and log files
    logs.py        OpLogs: the ops' log files
    rows.py        values as stored, rows -> Run / HostResult / OpResult
    database.py    Database: opening, transactions, sqlite and OS errors -> StateError
    schema.py      the tables and their migration
    processes.py   Controller, process_alive: is a run's controller still there?
"""

from fleet.state.database import BUSY_TIMEOUT, DB_NAME
from fleet.state.processes import Controller, process_alive, process_start_time
from fleet.state.rows import TAIL_BYTES
from fleet.state.schema import SCHEMA_VERSION
from fleet.state.store import StateStore

__all__ = [
    "BUSY_TIMEOUT",
    "DB_NAME",
    "SCHEMA_VERSION",
    "TAIL_BYTES",
    "Controller",
    "StateStore",
    "process_alive",
    "process_start_time",
]
