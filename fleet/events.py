"""Typed events the executor emits, the bus the store, the views and the dashboard use, and
the events' JSON form.

The executor never prints and never writes the store itself: it emits these events in order,
and each subscriber (the `StateStore`, a terminal view, the JSON progress writer, the
dashboard's event stream) turns them into what it needs. Subscribers are called synchronously,
in the order they subscribed; an exception in a subscriber propagates to the emitter (so a
store that cannot write stops the run instead of losing the record).

`host` is None for controller ops. `event_json` is the one translation of an event to JSON,
compact for the CLI's `--json` progress and full for the dashboard's stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleet.models import HostResult, OpResult, OpStatus, Run, iso


@dataclass(frozen=True)
class RunStarted:
    run: Run  # hosts and ops all PENDING
    pid: int = 0
    ops: tuple[str, ...] = ()
    controller_ops: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpStarted:
    run_id: str
    host: str | None
    op: str
    started_at: datetime
    attempt: int = 1


@dataclass(frozen=True)
class OpOutput:
    run_id: str
    host: str | None
    op: str
    data: bytes


@dataclass(frozen=True)
class OpSlow:
    """An op has run past its warn_after time."""

    run_id: str
    host: str | None
    op: str
    elapsed: float


@dataclass(frozen=True)
class OpNote:
    """A line fleet itself adds to an op's log (retries, rollback, cancel decisions...)."""

    run_id: str
    host: str | None
    op: str
    message: str


@dataclass(frozen=True)
class OpFinished:
    run_id: str
    host: str | None
    result: OpResult


@dataclass(frozen=True)
class HostFinished:
    run_id: str
    result: HostResult


@dataclass(frozen=True)
class RunFinished:
    run: Run


Event = (
    RunStarted | OpStarted | OpOutput | OpSlow | OpNote | OpFinished | HostFinished | RunFinished
)
Subscriber = Callable[[Event], Any]


@dataclass
class EventBus:
    subscribers: list[Subscriber] = field(default_factory=list)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self.subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self.subscribers:
                self.subscribers.remove(subscriber)

        return unsubscribe

    def emit(self, event: Event) -> None:
        for subscriber in list(self.subscribers):
            subscriber(event)


# ---------------------------------------------------------------------------------------------
# The JSON form


def event_json(event: Event, *, full: bool) -> dict[str, Any] | None:
    """The JSON object for `event`; None for op output (the logs carry it, never a message).

    Every object starts with `event` (`run_started`, `op_started`, ...), then `run_id`, `host`
    and `op` where the event has them. The rest depends on `full`:

    - compact (`full=False`, the CLI's `--json` progress lines): flat; a run or a result cut to
      what a script acts on (statuses, exit code, `duration`, host counts, the run's op names).
    - full (`full=True`, the dashboard's stream): a run or a result whole, as its `to_json()`
      under `run` or `result`, so a page can replace what it holds.

    Both give `op_slow`'s `elapsed` in seconds, to the millisecond.
    """
    match event:
        case RunStarted(run=run):
            if full:
                return {"event": "run_started", "run": run.to_json()}
            return {
                "event": "run_started",
                "run_id": run.run_id,
                "pipeline": run.pipeline,
                "status": run.status.value,
                "hosts": list(run.hosts),
                "ops": list(event.ops),
                "controller_ops": list(event.controller_ops),
                "retry_of": run.retry_of,
                "pid": event.pid,
            }
        case OpStarted():
            status = {} if full else {"status": OpStatus.RUNNING.value}
            started = {"attempt": event.attempt, "started_at": iso(event.started_at)}
            return _op_json("op_started", event, **status, **started)
        case OpSlow():
            return _op_json("op_slow", event, elapsed=round(event.elapsed, 3))  # s, to the ms
        case OpNote():
            return _op_json("op_note", event, message=event.message)
        case OpFinished(result=result):
            head = {"event": "op_finished", "run_id": event.run_id, "host": event.host}
            return {**head, "result": result.to_json()} if full else {**head, **_op_summary(result)}
        case HostFinished(result=result):
            head = {"event": "host_finished", "run_id": event.run_id, "host": result.name}
            if full:
                return {**head, "result": result.to_json()}
            return {
                **head,
                "status": result.status.value,
                "failed_op": result.failed_op,
                "rolled_back": result.rolled_back,
            }
        case RunFinished(run=run):
            whole = {"run": run.to_json()} if full else run.summary_json()
            return {"event": "run_finished", **whole}
    return None


def _op_json(name: str, event: OpStarted | OpSlow | OpNote, **fields: Any) -> dict[str, Any]:
    return {"event": name, "run_id": event.run_id, "host": event.host, "op": event.op, **fields}


def _op_summary(result: OpResult) -> dict[str, Any]:
    """An op's result, flat, without its log path and output tail; `duration` in seconds."""
    took = None
    if result.started_at is not None and result.finished_at is not None:
        took = (result.finished_at - result.started_at).total_seconds()
    return {
        "op": result.op,
        "status": result.status.value,
        "exit_code": result.exit_code,
        "error": result.error,
        "attempts": result.attempts,
        "started_at": iso(result.started_at),
        "finished_at": iso(result.finished_at),
        "duration": took,
    }
