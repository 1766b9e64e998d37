"""Fakes for executor unit tests: a session that only connects, a runner that follows a script."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fleet.errors import ConnectError
from fleet.events import Event, EventBus
from fleet.models import ControllerSettings, Host
from fleet.ops.builtin import OpRegistry
from fleet.run.executor import PipelineExecutor
from fleet.run.runners import OpContext, OpOutcome
from fleet.transport.base import CommandResult, OutputSink, Session


def make_hosts(*names: str, tags: Iterable[str] = ()) -> list[Host]:
    return [Host(name=n, address=n, hostname=n, tags=tuple(tags)) for n in names]


@dataclass
class Behaviour:
    """What one (host, op) does: `exit_code` after `delay` seconds, or hang, or raise."""

    exit_code: int = 0
    delay: float = 0.0
    hang: bool = False
    error: str | None = None
    output: bytes = b""


@dataclass
class FleetScript:
    behaviours: dict[tuple[str, str], list[Behaviour]] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (event, host, op)
    cancelled: list[tuple[str, str]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    def set(self, host: str, op: str, *behaviours: Behaviour) -> None:
        self.behaviours[(host, op)] = list(behaviours)

    def next(self, host: str, op: str) -> Behaviour:
        queue = self.behaviours.get((host, op))
        if not queue:
            return Behaviour()
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def started(self, host: str | None = None) -> list[tuple[str, str]]:
        return [(h, o) for e, h, o in self.calls if e == "start" and host in (None, h)]


class FakeSession(Session):
    def __init__(self, host: Host, script: FleetScript) -> None:
        self.host = host
        self.script = script

    async def connect(self) -> None:
        if self.host.name in self.script.unreachable:
            raise ConnectError(self.host.name, "connection refused")

    async def run(
        self,
        script: str,
        *,
        output: OutputSink,
        timeout: float | None = None,
        privileged: bool = False,
    ) -> CommandResult:
        raise AssertionError("FakeSession.run is not used by FakeRunner")

    async def kill(self, pgid: int, *, signal: str = "TERM", privileged: bool = False) -> None:
        pass

    async def reconnect(self) -> None:
        pass

    async def close(self) -> None:
        self.script.closed.append(self.host.name)


class FakeRunner:
    def __init__(self, host: Host, script: FleetScript) -> None:
        self.host = host
        self.script = script

    async def run(self, ctx: OpContext) -> OpOutcome:
        name, op = self.host.name, ctx.op.id
        behaviour = self.script.next(name, op)
        self.script.calls.append(("start", name, op))
        try:
            if behaviour.output:
                ctx.output(behaviour.output)
            if behaviour.hang:
                await asyncio.Event().wait()
            await asyncio.sleep(behaviour.delay)
        except asyncio.CancelledError:
            self.script.cancelled.append((name, op))
            raise
        self.script.calls.append(("end", name, op))
        if behaviour.error:
            raise ConnectError(name, behaviour.error)
        before = after = None
        if ctx.op.switch_like:
            before, after = f"/nix/store/old-{name}", f"/nix/store/new-{name}"
        return OpOutcome(
            behaviour.exit_code,
            system_before=before,
            system_after=after,
            error=None if behaviour.exit_code == 0 else f"exit status {behaviour.exit_code}",
        )


def make_executor(
    script: FleetScript,
    *,
    ops: OpRegistry | None = None,
    events: list[Event] | None = None,
    locks: object | None = None,
) -> PipelineExecutor:
    bus = EventBus()
    if events is not None:
        bus.subscribe(events.append)
    return PipelineExecutor(
        ops=ops or OpRegistry.with_builtins(),
        controller=ControllerSettings(repo="/nonexistent"),
        session_factory=lambda host: FakeSession(host, script),
        bus=bus,
        locks=locks,  # type: ignore[arg-type]
        runner_factory=lambda session, host, _unit: FakeRunner(host, script),
    )


def statuses(run: object, host: str) -> Sequence[str]:
    return [o.status.value for o in run.hosts[host].ops]  # type: ignore[attr-defined]
