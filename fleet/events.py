"""Typed events the executor emits, and the bus the store, the views and the dashboard use.

The executor never prints and never writes the store itself: it emits these events in order,
and each subscriber (the `StateStore`, a terminal view, the JSON progress writer, the
dashboard's event stream) turns them into what it needs. Subscribers are called synchronously,
in the order they subscribed; an exception in a subscriber propagates to the emitter (so a
store that cannot write stops the run instead of losing the record).

`host` is None for controller ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleet.models import HostResult, OpResult, Run


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
