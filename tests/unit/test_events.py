"""The events' JSON form: one translation, compact for the CLI's `--json` progress and full for
the dashboard's stream, and both views writing exactly what it returns."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest

from fleet.cli.lineviews import JsonProgress
from fleet.events import (
    Event,
    EventBus,
    HostFinished,
    OpFinished,
    OpNote,
    OpOutput,
    OpSlow,
    OpStarted,
    RunFinished,
    RunStarted,
    event_json,
)
from fleet.models import HostResult, HostStatus, OpResult, OpStatus, Run, RunStatus
from fleet.state import StateStore
from fleet.web.stream import EventHub, sse

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# The compact fields no full message has: what the CLI takes from the event or works out.
COMPACT_ONLY = {
    "run_started": {"ops", "controller_ops", "pid"},
    "op_started": {"status"},
    "op_finished": {"duration"},
    "run_finished": {"hosts_total", "hosts_ok", "hosts_failed"},
}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def every_event() -> list[Event]:
    """At least one event of each type, with controller ops, retries and switch results."""
    switch = OpResult(
        "switch",
        OpStatus.FAILED,
        exit_code=4,
        started_at=at(1.2),
        finished_at=at(4.25),
        error="activation\nfailed",
        log="/state/logs/R1/alpha/switch.log",
        system_before="/nix/store/a",
        system_after="/nix/store/b",
        attempts=2,
        tail="boom\n",
        switch_like=True,
    )
    pull = OpResult("pull", OpStatus.SUCCESS, 0, at(0), at(1.2), attempts=1)
    alpha = HostResult("alpha", HostStatus.FAILED, "switch", (pull, switch), rolled_back=True)
    beta = HostResult("beta", HostStatus.COMPLETE, ops=(pull,))
    pending = {"alpha": HostResult("alpha"), "beta": HostResult("beta")}
    started = Run("R1", "do-all", started_at=T0, retry_of="R0", hosts=pending)
    finished = Run(
        "R1",
        "do-all",
        RunStatus.FAILED,
        started_at=T0,
        finished_at=at(5),
        retry_of="R0",
        controller_ops=(OpResult("merge-pr", OpStatus.SUCCESS, 0, T0, at(0.5)),),
        hosts={"alpha": alpha, "beta": beta},
        options={"mode": "lockstep"},
    )
    return [
        RunStarted(started, pid=42, ops=("pull", "switch"), controller_ops=("merge-pr",)),
        OpStarted("R1", None, "merge-pr", T0),
        OpStarted("R1", "alpha", "switch", at(1.2), attempt=2),
        OpOutput("R1", "alpha", "switch", b"building\n"),
        OpSlow("R1", "alpha", "switch", 65.0001234),
        OpNote("R1", None, "merge-pr", "retrying:\nconnection lost"),
        OpFinished("R1", "alpha", switch),
        OpFinished("R1", None, pull),
        HostFinished("R1", alpha),
        HostFinished("R1", beta),
        RunFinished(finished),
    ]


def test_the_examples_cover_every_event_type() -> None:
    assert {type(e) for e in every_event()} == set(get_args(Event))


@pytest.mark.parametrize("event", every_event(), ids=lambda e: type(e).__name__)
def test_compact_and_full_agree_on_every_field_they_share(event: Event) -> None:
    compact, full = event_json(event, full=False), event_json(event, full=True)
    if isinstance(event, OpOutput):
        assert compact is None and full is None
        return
    assert compact is not None and full is not None
    assert compact["event"] == full["event"]
    nested: dict[str, Any] = full.get("run") or full.get("result") or {}
    assert set(full) - set(compact) <= {"run", "result"}
    own = set(compact) - set(full) - set(nested)
    assert own == COMPACT_ONLY.get(compact["event"], set())
    for key, value in compact.items():
        if key in own:
            continue
        theirs = full[key] if key in full else nested[key]
        if key == "hosts":  # compact: the names; full: each host's result
            theirs = list(theirs)
        assert value == theirs, key


def test_compact_json_of_a_finished_op() -> None:
    event = every_event()[6]
    assert event_json(event, full=False) == {
        "event": "op_finished",
        "run_id": "R1",
        "host": "alpha",
        "op": "switch",
        "status": "FAILED",
        "exit_code": 4,
        "error": "activation\nfailed",
        "attempts": 2,
        "started_at": "2024-05-01T12:00:01.200000Z",
        "finished_at": "2024-05-01T12:00:04.250000Z",
        "duration": 3.05,
    }


def test_the_cli_and_the_dashboard_write_what_event_json_returns(tmp_path: Path) -> None:
    out = io.StringIO()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    with StateStore(tmp_path) as store:
        hub = EventHub(store, is_local=lambda run_id: True)
        hub._queues.add(queue)  # a page with the stream open
        bus = EventBus()
        bus.subscribe(JsonProgress(out))
        bus.subscribe(hub.publish)
        for event in every_event():
            bus.emit(event)

    compact = [event_json(e, full=False) for e in every_event()]
    full = [event_json(e, full=True) for e in every_event()]
    lines = [json.dumps(c, separators=(",", ":")) + "\n" for c in compact if c is not None]
    assert out.getvalue() == "".join(lines)
    sent = [queue.get_nowait() for _ in range(queue.qsize())]
    assert sent == [sse(f) for f in full if f is not None]


def test_op_slow_gives_seconds_to_the_millisecond_in_both_forms() -> None:
    slow = OpSlow("R1", "alpha", "switch", 65.0001234)
    assert (
        event_json(slow, full=False)
        == event_json(slow, full=True)
        == {
            "event": "op_slow",
            "run_id": "R1",
            "host": "alpha",
            "op": "switch",
            "elapsed": 65.0,
        }
    )
