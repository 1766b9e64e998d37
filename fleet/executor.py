"""PipelineExecutor: runs a pipeline's ops over a set of hosts with && semantics.

Lockstep (the default) runs each op on every active host before any host starts the next;
streaming lets each host go through its ops as fast as it can. Controller ops are barriers in
both modes: they run once, and when one fails every host leaves the pipeline at it. A host that
fails (or times out, or cannot be reached, or is held by another run) is excluded from every
later op, which is recorded as SKIPPED. One asyncio task per host, a semaphore for
`max_parallel`; cancellation is asyncio task cancellation, and the transport kills the remote
process groups in its cleanup. The executor never prints: it emits events (fleet.events).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet.controller import ControllerOpRunner
from fleet.errors import ConfigError, FleetError, HostError
from fleet.events import (
    EventBus,
    HostFinished,
    OpFinished,
    OpNote,
    OpOutput,
    OpSlow,
    OpStarted,
    RunFinished,
    RunStarted,
)
from fleet.models import (
    ControllerSettings,
    Host,
    HostResult,
    HostStatus,
    Mode,
    Op,
    OpResult,
    OpStatus,
    Pipeline,
    Run,
    RunStatus,
    Scope,
    host_status_of,
    run_status_of,
    utcnow,
)
from fleet.ops import OpRegistry, Privilege
from fleet.runners import HostOpRunner, OpContext, OpOutcome, TailBuffer, controller_unit
from fleet.transport.base import Session, SessionFactory

# How many hosts may be connecting (SSH handshake, login, shell start) at once: hundreds of
# handshakes at a time only slow each other down, past the shell-start timeout on a busy
# controller; the hosts that are already connected go on meanwhile.
CONNECTING_AT_ONCE = 64


@dataclass(frozen=True)
class MaxFail:
    """`--max-fail N` or `--max-fail P%`: how many failed hosts are tolerated."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> MaxFail:
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if not 0 <= percent <= 100:
                    raise ValueError
                return cls(percent=percent)
            count = int(text)
            if count < 0:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise ConfigError(f"--max-fail: expected N or P% (got {text!r})") from None

    def exceeded(self, failed: int, total: int) -> bool:
        limit = self.count if self.count is not None else (self.percent or 0) * total / 100
        return failed > limit

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True)
class RunOptions:
    mode: Mode = Mode.LOCKSTEP
    max_parallel: int | None = None
    max_fail: MaxFail | None = None
    rollback_on_failure: bool = False
    pr: int | None = None
    selector: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "max_parallel": self.max_parallel,
            "max_fail": str(self.max_fail) if self.max_fail else None,
            "rollback_on_failure": self.rollback_on_failure,
            "pr": self.pr,
            "on": self.selector,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunOptions:
        max_fail = data.get("max_fail")
        return cls(
            mode=Mode(data.get("mode", "lockstep")),
            max_parallel=data.get("max_parallel"),
            max_fail=MaxFail.parse(max_fail) if max_fail else None,
            rollback_on_failure=bool(data.get("rollback_on_failure")),
            pr=data.get("pr"),
            selector=data.get("on"),
        )


class HostLocks(Protocol):
    def acquire_hosts(self, run_id: str, hosts: Sequence[str]) -> dict[str, str]: ...


class HostRunner(Protocol):
    async def run(self, ctx: OpContext) -> OpOutcome: ...


RunnerFactory = Callable[[Session, Host, "str | None"], HostRunner]


def default_runner(session: Session, host: Host, self_unit: str | None) -> HostRunner:
    return HostOpRunner(session, host, self_unit=self_unit)


@dataclass
class _HostState:
    host: Host
    results: list[OpResult]
    status: HostStatus = HostStatus.PENDING
    failed_op: str | None = None
    rolled_back: bool = False
    session: Session | None = None
    start: int = 0  # first pipeline index to run (retry)

    def snapshot(self) -> HostResult:
        return HostResult(
            self.host.name, self.status, self.failed_op, tuple(self.results), self.rolled_back
        )


@dataclass
class _RunState:
    run_id: str
    pipeline: Pipeline
    ops: list[Op]
    options: RunOptions
    retry_of: str | None
    started_at: Any
    hosts: dict[str, _HostState]
    controller: dict[int, OpResult] = field(default_factory=dict)
    failed_hosts: int = 0
    halted: bool = False  # max-fail reached: start nothing new
    cancelled: bool = False
    deferred: list[tuple[str, str]] = field(default_factory=list)  # (host, unit)

    def host_positions(self) -> list[int]:
        return [i for i, op in enumerate(self.ops) if op.scope is Scope.HOST]

    def snapshot(self, status: RunStatus = RunStatus.RUNNING, finished: Any = None) -> Run:
        return Run(
            run_id=self.run_id,
            pipeline=self.pipeline.id,
            status=status,
            started_at=self.started_at,
            finished_at=finished,
            retry_of=self.retry_of,
            controller_ops=tuple(self.controller[i] for i in sorted(self.controller)),
            hosts={name: h.snapshot() for name, h in self.hosts.items()},
            options=self.options.to_json(),
        )


class PipelineExecutor:
    """Runs pipelines; one instance may run many pipelines one after another."""

    def __init__(
        self,
        *,
        ops: OpRegistry,
        controller: ControllerSettings,
        session_factory: SessionFactory,
        bus: EventBus,
        locks: HostLocks | None = None,
        new_run_id: Callable[[], str] | None = None,
        runner_factory: RunnerFactory = default_runner,
        log_path: Callable[[str, str | None, str], str] | None = None,
    ) -> None:
        self.ops = ops
        self.controller = ControllerOpRunner(controller)
        self.session_factory = session_factory
        self.bus = bus
        self.locks = locks
        self.new_run_id = new_run_id or _default_run_id
        self.self_unit = controller_unit()
        self.runner_factory = runner_factory
        self.log_path = log_path
        self._main: asyncio.Task[None] | None = None
        self._state: _RunState | None = None
        self._connecting = asyncio.Semaphore(CONNECTING_AT_ONCE)  # made again by each run

    # -- public API ----------------------------------------------------------------------

    def cancel(self) -> None:
        """Cancel the run in progress (Ctrl-C, SIGTERM, the dashboard's Cancel button).

        Once every op has ended it is too late: the run is being recorded as it ended."""
        if self._state is None or (self._main is not None and self._main.done()):
            return
        self._state.cancelled = True
        if self._main is not None:
            self._main.cancel()

    def validate(self, pipeline: Pipeline, options: RunOptions) -> list[Op]:
        ops = [self.ops.get(op_id) for op_id in pipeline.ops]
        if any(op.id == "merge-pr" and op.builtin for op in ops) and options.pr is None:
            raise ConfigError(f"{pipeline.id}: merge-pr needs a pull request number: --pr N")
        return ops

    async def execute(
        self,
        pipeline: Pipeline,
        hosts: Sequence[Host],
        options: RunOptions = RunOptions(),
        *,
        run_id: str | None = None,
        retry_of: str | None = None,
        start_at: Mapping[str, int] | None = None,
    ) -> Run:
        """Run `pipeline` on `hosts`; returns the finished Run (also when cancelled)."""
        ops = self.validate(pipeline, options)
        state = self._new_state(pipeline, ops, hosts, options, run_id, retry_of, start_at or {})
        self._state = state
        self.bus.emit(
            RunStarted(
                state.snapshot(),
                pid=os.getpid(),
                ops=tuple(op.id for op in ops if op.scope is Scope.HOST),
                controller_ops=tuple(op.id for op in ops if op.scope is Scope.CONTROLLER),
            )
        )
        self._mark_done_before(state)
        outer_cancelled = False
        try:
            self._lock_hosts(state)
            self._main = asyncio.create_task(self._run(state))
            if state.cancelled:  # cancel() came before the run's task existed: start nothing
                self._main.cancel()
            try:
                await asyncio.shield(self._main)
            except asyncio.CancelledError:
                if not self._main.done():  # we ourselves were cancelled: stop the run
                    outer_cancelled = True
                    state.cancelled = True
                    self._main.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._main
                elif not state.cancelled:
                    raise
            return await self._finish(state)
        finally:
            await self._close_sessions(state)
            self._main = None
            self._state = None
            if outer_cancelled:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError

    # -- setup -----------------------------------------------------------------------------

    def _new_state(
        self,
        pipeline: Pipeline,
        ops: list[Op],
        hosts: Sequence[Host],
        options: RunOptions,
        run_id: str | None,
        retry_of: str | None,
        start_at: Mapping[str, int],
    ) -> _RunState:
        host_ops = [op for op in ops if op.scope is Scope.HOST]
        states = {
            h.name: _HostState(
                host=h,
                results=[OpResult(op.id, switch_like=op.switch_like) for op in host_ops],
                start=start_at.get(h.name, 0),
            )
            for h in hosts
        }
        controller = {
            i: OpResult(op.id) for i, op in enumerate(ops) if op.scope is Scope.CONTROLLER
        }
        return _RunState(
            run_id=run_id or self.new_run_id(),
            pipeline=pipeline,
            ops=ops,
            options=options,
            retry_of=retry_of,
            started_at=utcnow(),
            hosts=states,
            controller=controller,
        )

    def _mark_done_before(self, state: _RunState) -> None:
        """A retry skips the ops each host already completed in the earlier run."""
        if state.retry_of is None:
            return
        note = f"done in run {state.retry_of}"
        for hs in state.hosts.values():
            for k, pos in enumerate(state.host_positions()):
                if pos < hs.start:
                    self._set_result(state, hs, k, OpStatus.SKIPPED, error=note)
        for i in list(state.controller):
            if all(hs.start > i for hs in state.hosts.values()):
                result = dataclasses.replace(
                    state.controller[i], status=OpStatus.SKIPPED, error=note
                )
                state.controller[i] = result
                self.bus.emit(OpFinished(state.run_id, None, result))

    def _lock_hosts(self, state: _RunState) -> None:
        if self.locks is None:
            return
        refused = self.locks.acquire_hosts(state.run_id, list(state.hosts))
        for name, holder in refused.items():
            hs = state.hosts[name]
            k = self._first_to_run(state, hs)
            error = f"host is held by run {holder}"
            if k is not None:
                self._set_result(state, hs, k, OpStatus.FAILED, error=error)
            self._exclude(state, hs, k, HostStatus.FAILED)

    # -- the run ---------------------------------------------------------------------------

    async def _run(self, state: _RunState) -> None:
        self._connecting = asyncio.Semaphore(CONNECTING_AT_ONCE)  # this run's event loop
        semaphore = asyncio.Semaphore(state.options.max_parallel or len(state.hosts) or 1)
        for segment in self._segments(state):
            if state.halted or state.cancelled:
                break
            first = state.ops[segment[0]]
            if first.scope is Scope.CONTROLLER:
                if not await self._run_controller_op(state, segment[0]):
                    return
                continue
            active = [hs for hs in state.hosts.values() if not hs.status.finished]
            await self._together(
                self._run_host_segment(state, hs, segment, semaphore) for hs in active
            )

    @staticmethod
    async def _together(host_tasks: Iterable[Coroutine[Any, Any, None]]) -> None:
        """One task per host, all awaited to the end: when the run is cancelled (or one raises,
        e.g. the store cannot write) the others are cancelled and awaited too, so that every
        host has stopped its remote work and recorded its ops before the run is recorded.
        (`gather` would return at the first cancelled task and leave the others running.)"""
        try:
            async with asyncio.TaskGroup() as group:
                for coro in host_tasks:
                    group.create_task(coro)
        except BaseExceptionGroup as errors:
            raise errors.exceptions[0] from None

    def _segments(self, state: _RunState) -> list[list[int]]:
        """Lockstep: one op a segment. Streaming: runs of host ops between controller ops."""
        segments: list[list[int]] = []
        for i, op in enumerate(state.ops):
            streaming = state.options.mode is Mode.STREAMING
            if (
                streaming
                and op.scope is Scope.HOST
                and segments
                and state.ops[segments[-1][-1]].scope is Scope.HOST
            ):
                segments[-1].append(i)
            else:
                segments.append([i])
        return segments

    async def _run_controller_op(self, state: _RunState, index: int) -> bool:
        op = state.ops[index]
        if state.controller[index].status is OpStatus.SKIPPED:
            return True
        result = await self._attempts(state, None, op, index)
        state.controller[index] = result
        self.bus.emit(OpFinished(state.run_id, None, result))
        if result.status is OpStatus.SUCCESS:
            return True
        for hs in state.hosts.values():
            if hs.status.finished:
                continue
            hs.failed_op = op.id
            self._exclude(state, hs, None, HostStatus.FAILED)
        return False

    async def _run_host_segment(
        self, state: _RunState, hs: _HostState, segment: list[int], semaphore: asyncio.Semaphore
    ) -> None:
        positions = state.host_positions()
        for index in segment:
            k = positions.index(index)
            if index < hs.start or hs.status.finished:
                continue
            async with semaphore:
                if state.cancelled:  # (also while this host waited) _finish marks the rest
                    return
                if state.halted:  # max-fail reached while this host waited
                    self._exclude(state, hs, k, HostStatus.CANCELLED)
                    return
                result = await self._attempts(state, hs, state.ops[index], k)
            if result.status is not OpStatus.SUCCESS:
                await self._host_failed(state, hs, k)
                return
        if hs.status is not HostStatus.FAILED and self._host_done(state, hs):
            hs.status = HostStatus.COMPLETE
            self.bus.emit(HostFinished(state.run_id, hs.snapshot()))

    def _host_done(self, state: _RunState, hs: _HostState) -> bool:
        return all(r.status.finished for r in hs.results)

    async def _host_failed(self, state: _RunState, hs: _HostState, k: int) -> None:
        state.failed_hosts += 1
        hs.failed_op = hs.results[k].op
        try:
            rollback = state.options.rollback_on_failure and not state.cancelled
            if rollback and self._switched_before(state, hs, k):
                await self._rollback(state, hs)
        finally:  # also when cancelled during the rollback: the later ops never run
            self._exclude(state, hs, k + 1, HostStatus.FAILED)
        max_fail = state.options.max_fail
        if max_fail and max_fail.exceeded(state.failed_hosts, len(state.hosts)):
            state.halted = True

    def _switched_before(self, state: _RunState, hs: _HostState, k: int) -> bool:
        return any(
            r.switch_like and r.op != "rollback" and r.status is OpStatus.SUCCESS
            for r in hs.results[:k]
        )

    async def _rollback(self, state: _RunState, hs: _HostState) -> None:
        op = self.ops.get("rollback")
        hs.results.append(OpResult(op.id, switch_like=True))
        k = len(hs.results) - 1
        self._note(state, hs.host.name, op.id, "rolling back: an op after the switch failed")
        if state.cancelled:  # by a subscriber of that note: the rollback never starts
            log = self._log(state, hs.host.name, op.id)
            self._set_result(state, hs, k, OpStatus.CANCELLED, error="cancelled", log=log)
            return
        result = await self._attempts(state, hs, op, k)
        hs.rolled_back = result.status is OpStatus.SUCCESS

    # -- one op ------------------------------------------------------------------------------

    async def _attempts(self, state: _RunState, hs: _HostState | None, op: Op, k: int) -> OpResult:
        """Run an op with its automatic retries; record and emit every step."""
        name = hs.host.name if hs else None
        attempt = 0
        while True:
            attempt += 1
            result = await self._attempt(state, hs, op, k, attempt)
            if result.status.failed and attempt <= op.retries and not state.cancelled:
                retry = f"{result.status}: retrying ({attempt + 1} of {op.retries + 1})"
                self._note(state, name, op.id, retry)
            # (checked again: a subscriber of that note may have cancelled the run)
            if not result.status.failed or attempt > op.retries or state.cancelled:
                return result

    async def _attempt(
        self, state: _RunState, hs: _HostState | None, op: Op, k: int, attempt: int
    ) -> OpResult:
        name = hs.host.name if hs else None
        started = utcnow()
        if hs is not None:
            hs.status = HostStatus.RUNNING
            self._set_result(
                state, hs, k, OpStatus.RUNNING, started_at=started, attempts=attempt, emit=False
            )
        self.bus.emit(OpStarted(state.run_id, name, op.id, started, attempt))
        tail = TailBuffer()

        def output(data: bytes) -> None:
            tail.add(data)
            self.bus.emit(OpOutput(state.run_id, name, op.id, data))

        loop = asyncio.get_running_loop()
        slow = (
            loop.call_later(op.warn_after, self._slow, state, name, op, loop.time())
            if op.warn_after
            else None
        )
        outcome: OpOutcome | None = None
        status, error = OpStatus.FAILED, None
        try:
            async with asyncio.timeout(op.timeout):
                outcome = await self._dispatch(state, hs, op, attempt, output, tail)
            status = OpStatus.SUCCESS if outcome.ok else OpStatus.FAILED
            error = outcome.error
        except TimeoutError:
            status, error = OpStatus.TIMEOUT, f"timed out after {op.timeout:g}s"
        except HostError as exc:
            status, error = OpStatus.FAILED, exc.reason
        except asyncio.CancelledError:
            status, error = OpStatus.CANCELLED, "cancelled"
            raise
        finally:
            if slow is not None:
                slow.cancel()
            result = self._op_result(op, status, error, outcome, started, attempt, tail)
            result = dataclasses.replace(result, log=self._log(state, name, op.id))
            if hs is not None:
                hs.results[k] = result
                self.bus.emit(OpFinished(state.run_id, name, result))
                if status is OpStatus.CANCELLED:
                    self._exclude(state, hs, k + 1, HostStatus.CANCELLED)
            elif status is OpStatus.CANCELLED:
                state.controller[k] = result
                self.bus.emit(OpFinished(state.run_id, None, result))
        if outcome and outcome.deferred_units and hs is not None:
            state.deferred.extend((hs.host.name, unit) for unit in outcome.deferred_units)
        return result

    @staticmethod
    def _op_result(
        op: Op,
        status: OpStatus,
        error: str | None,
        outcome: OpOutcome | None,
        started: Any,
        attempt: int,
        tail: TailBuffer,
    ) -> OpResult:
        return OpResult(
            op=op.id,
            status=status,
            exit_code=outcome.exit_code if outcome else None,
            started_at=started,
            finished_at=utcnow(),
            error=error,
            system_before=outcome.system_before if outcome else None,
            system_after=outcome.system_after if outcome else None,
            attempts=attempt,
            tail=tail.lines(20),
            switch_like=op.switch_like,
        )

    async def _dispatch(
        self,
        state: _RunState,
        hs: _HostState | None,
        op: Op,
        attempt: int,
        output: Callable[[bytes], None],
        tail: TailBuffer,
    ) -> OpOutcome:
        name = hs.host.name if hs else None
        if hs is None:
            return await self.controller.run(op, output, pr=state.options.pr)
        session = await self._session(hs, state.run_id)
        ctx = OpContext(
            run_id=state.run_id,
            op=op,
            attempt=attempt,
            output=output,
            note=lambda msg: self._note(state, name, op.id, msg),
            deadline=time.monotonic() + op.timeout,
            tail=tail,
        )
        return await self.runner_factory(session, hs.host, self.self_unit).run(ctx)

    async def _session(self, hs: _HostState, run_id: str) -> Session:
        if hs.session is None:
            session = self.session_factory(hs.host)
            session.hold_for(run_id)
            async with self._connecting:
                await session.connect()  # ConnectError, HostLockedError -> the op fails: why
            hs.session = session
        return hs.session

    # -- bookkeeping -----------------------------------------------------------------------

    def _first_to_run(self, state: _RunState, hs: _HostState) -> int | None:
        for k, pos in enumerate(state.host_positions()):
            if pos >= hs.start and not hs.results[k].status.finished:
                return k
        return None

    def _set_result(
        self,
        state: _RunState,
        hs: _HostState,
        k: int,
        status: OpStatus,
        *,
        emit: bool = True,
        **changes: Any,
    ) -> None:
        result = dataclasses.replace(hs.results[k], status=status, **changes)
        if status.finished and result.finished_at is None and status is not OpStatus.SKIPPED:
            result = dataclasses.replace(result, finished_at=utcnow())
        hs.results[k] = result
        if emit:
            self.bus.emit(OpFinished(state.run_id, hs.host.name, result))

    def _exclude(
        self, state: _RunState, hs: _HostState, from_k: int | None, status: HostStatus
    ) -> None:
        """The host leaves the pipeline: its unfinished ops become SKIPPED (or CANCELLED)."""
        op_status = OpStatus.CANCELLED if status is HostStatus.CANCELLED else OpStatus.SKIPPED
        for k, r in enumerate(hs.results):
            if (from_k is None or k >= from_k) and not r.status.finished:
                self._set_result(state, hs, k, op_status)
        if status is HostStatus.FAILED and hs.failed_op is None:
            failed = [r.op for r in hs.results if r.status.failed]
            hs.failed_op = failed[0] if failed else None
        if any(r.status.failed for r in hs.results) or hs.failed_op:
            status = HostStatus.FAILED
        hs.status = status
        self.bus.emit(HostFinished(state.run_id, hs.snapshot()))

    def _log(self, state: _RunState, host: str | None, op: str) -> str | None:
        return self.log_path(state.run_id, host, op) if self.log_path is not None else None

    def _note(self, state: _RunState, host: str | None, op: str, message: str) -> None:
        self.bus.emit(OpNote(state.run_id, host, op, message))

    def _slow(self, state: _RunState, host: str | None, op: Op, started: float) -> None:
        elapsed = asyncio.get_running_loop().time() - started
        self.bus.emit(OpSlow(state.run_id, host, op.id, elapsed))

    async def _finish(self, state: _RunState) -> Run:
        for i, result in list(state.controller.items()):
            if not result.status.finished:
                op_status = OpStatus.CANCELLED if state.cancelled else OpStatus.SKIPPED
                state.controller[i] = dataclasses.replace(result, status=op_status)
                self.bus.emit(OpFinished(state.run_id, None, state.controller[i]))
        for hs in state.hosts.values():
            if not hs.status.finished:
                done = self._host_done(state, hs) and not state.cancelled and not state.halted
                if done:
                    hs.status = host_status_of(r.status for r in hs.results)
                    self.bus.emit(HostFinished(state.run_id, hs.snapshot()))
                else:
                    self._exclude(state, hs, None, HostStatus.CANCELLED)
        status = run_status_of(
            (hs.status for hs in state.hosts.values()), cancelled=state.cancelled
        )
        run = state.snapshot(status, utcnow())
        self.bus.emit(RunFinished(run))
        await self._deferred_restarts(state)
        return run

    async def _deferred_restarts(self, state: _RunState) -> None:
        """Restart this controller's own unit only now that the run is recorded."""
        for name, unit in state.deferred:
            session = state.hosts[name].session
            if session is None:
                continue
            priv = Privilege.of(state.hosts[name].host)
            argv = priv.argv(["systemctl", "restart", "--no-block", "--", unit])
            with contextlib.suppress(FleetError, OSError, TimeoutError):
                async with asyncio.timeout(10):
                    await session.capture(shlex.join(argv))

    async def _close_sessions(self, state: _RunState) -> None:
        sessions = [hs.session for hs in state.hosts.values() if hs.session is not None]

        async def close(session: Session) -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await session.close()

        await asyncio.gather(*(close(s) for s in sessions))


def _default_run_id() -> str:
    import secrets

    return utcnow().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
