"""Rows <-> models: values as SQLite stores them, and runs read back from the rows."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fleet.models import (
    HostResult,
    HostStatus,
    OpResult,
    OpStatus,
    Run,
    RunStatus,
    parse_iso,
)

TAIL_BYTES = 8192  # the most of an op's output tail the store keeps
CONTROLLER_HOST = ""  # the `host` of a controller op's row

_NEWEST_FIRST = "ORDER BY started_at DESC, rowid DESC"
_OP_COLUMNS = (
    "run_id, host, op, status, exit_code, started_at, finished_at, error, log, system_before,"
    " system_after, attempts, {tail}, switch_like"
)

_Rows = list[Sequence[Any]]


# ---------------------------------------------------------------------------------------------
# Models -> rows


def sql_time(value: datetime | None) -> str | None:
    """A fixed-width UTC timestamp, so that SQL compares them in time order."""
    return f"{value.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%fZ}" if value else None


def sql_text(text: str | None) -> str | None:
    """`text` as SQLite can store it: lone surrogates (undecodable output) become "?"."""
    return text.encode("utf-8", "replace").decode("utf-8") if text else text


def sql_tail(text: str) -> str:
    """The last TAIL_BYTES bytes of `text` (UTF-8), never cutting a character in two."""
    data = text.encode("utf-8", "replace")
    return data[-TAIL_BYTES:].decode("utf-8", "ignore")


# ---------------------------------------------------------------------------------------------
# Rows -> models


def select_runs(
    conn: sqlite3.Connection, where: str, params: Sequence[object], limit: int, *, tails: bool
) -> tuple[_Rows, _Rows, _Rows]:
    """The rows of the newest `limit` runs matching `where`: (runs, hosts, ops), for
    `assemble_runs`. Run it in one transaction, so that the three queries see one snapshot."""
    selected = f"SELECT run_id FROM runs WHERE {where} {_NEWEST_FIRST} LIMIT ?"
    args = (*params, limit)
    op_columns = _OP_COLUMNS.format(tail="tail" if tails else "''")
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
    return runs, hosts, ops


def assemble_runs(runs: _Rows, hosts: _Rows, ops: _Rows) -> list[Run]:
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
            controller_ops=tuple(op_results.get((run_id, CONTROLLER_HOST), ())),
            hosts=host_results.get(run_id, {}),
            options=json.loads(options),
        )
        for run_id, pipeline, status, started, finished, retry_of, options in runs
    ]


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
