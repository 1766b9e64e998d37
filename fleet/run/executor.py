"""PipelineExecutor: runs a pipeline's ops over a set of hosts with && semantics.

Lockstep (the default) runs each op on every active host before any host starts the next;
streaming lets each host go through its ops as fast as it can. Controller ops are barriers in
both modes: they run once, and when one fails every host leaves the pipeline at it. A host that
fails (or times out, or cannot be reached, or is held by another run) is excluded from every
later op, which is recorded as SKIPPED. One asyncio task per host, a semaphore for
`max_parallel`; cancellation is asyncio task cancellation, and the transport kills the remote
process groups in its cleanup. The executor never prints: it emits events (fleet.events).

A run follows its `RunOptions` (fleet.models); its record while it runs is a `RunState`
(fleet.run.runstate), which emits each op result and each host's end as the executor settles them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Protocol

from fleet import models
from fleet.errors import ConfigError, FleetError, HostError
from fleet.events import EventBus, OpNote, OpOutput, OpSlow, OpStarted, RunFinished, RunStarted
from fleet.models import (
    ControllerSettings,
    Host,
    HostStatus,
    Mode,
    Op,
    OpResult,
    OpStatus,
    Pipeline,
    Privilege,
    Run,
    RunOptions,
    Scope,
    host_status_of,
    run_status_of,
    utcnow,
)
from fleet.ops.builtin import OpRegistry
from fleet.run.controller import ControllerOpRunner
from fleet.run.runners import HostOpRunner, OpContext, OpOutcome, TailBuffer, controller_unit
from fleet.run.runstate import HostState, RunState
from fleet.transport.base import Session, SessionFactory

# How many hosts may be connecting (SSH handshake, login, shell start) at once: hundreds of
# handshakes at a time only slow each other down, past the shell-start timeout on a busy
# controller; the hosts that are already connected go on meanwhile.
CONNECTING_AT_ONCE = 64


class HostLocks(Protocol):
    def acquire_hosts(self, run_id: str, hosts: Sequence[str]) -> dict[str, str]: ...


class HostRunner(Protocol):
    async def run(self, ctx: OpContext) -> OpOutcome: ...


RunnerFactory = Callable[[Session, Host, "str | None"], HostRunner]


def default_runner(session: Session, host: Host, self_unit: str | None) -> HostRunner:
    return HostOpRunner(session, host, self_unit=self_unit)


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
        self.new_run_id = new_run_id or models.new_run_id
        self.self_unit = controller_unit()
        self.runner_factory = runner_factory
        self.log_path = log_path
        self._main: asyncio.Task[None] | None = None
        self._state: RunState | None = None
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
        run_id = run_id or self.new_run_id()
        state = RunState.create(
            self.bus, run_id, pipeline, ops, hosts, options, retry_of, start_at or {}
        )
        self._state = state
        self.bus.emit(
            RunStarted(
                state.snapshot(),
                pid=os.getpid(),
                ops=tuple(op.id for op in ops if op.scope is Scope.HOST),
                controller_ops=tuple(op.id for op in ops if op.scope is Scope.CONTROLLER),
            )
        )
        state.mark_done_before()
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

    def _lock_hosts(self, state: RunState) -> None:
        if self.locks is None:
            return
        refused = self.locks.acquire_hosts(state.run_id, list(state.hosts))
        for name, holder in refused.items():
            hs = state.hosts[name]
            k = state.first_to_run(hs)
            error = f"host is held by run {holder}"
            if k is not None:
                state.set_result(hs, k, OpStatus.FAILED, error=error)
            state.exclude(hs, k, HostStatus.FAILED)

    # -- the run ---------------------------------------------------------------------------

    async def _run(self, state: RunState) -> None:
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

    def _segments(self, state: RunState) -> list[list[int]]:
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

    async def _run_controller_op(self, state: RunState, index: int) -> bool:
        op = state.ops[index]
        if state.controller[index].status is OpStatus.SKIPPED:
            return True
        result = await self._attempts(state, None, op, index)
        state.record(None, index, result)
        if result.status is OpStatus.SUCCESS:
            return True
        for hs in state.hosts.values():
            if hs.status.finished:
                continue
            hs.failed_op = op.id
            state.exclude(hs, None, HostStatus.FAILED)
        return False

    async def _run_host_segment(
        self, state: RunState, hs: HostState, segment: list[int], semaphore: asyncio.Semaphore
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
                    state.exclude(hs, k, HostStatus.CANCELLED)
                    return
                result = await self._attempts(state, hs, state.ops[index], k)
            if result.status is not OpStatus.SUCCESS:
                await self._host_failed(state, hs, k)
                return
        if hs.status is not HostStatus.FAILED and hs.all_ops_finished():
            state.finish_host(hs, HostStatus.COMPLETE)

    async def _host_failed(self, state: RunState, hs: HostState, k: int) -> None:
        state.failed_hosts += 1
        hs.failed_op = hs.results[k].op
        try:
            rollback = state.options.rollback_on_failure and not state.cancelled
            if rollback and hs.switched_before(k):
                await self._rollback(state, hs)
        finally:  # also when cancelled during the rollback: the later ops never run
            state.exclude(hs, k + 1, HostStatus.FAILED)
        max_fail = state.options.max_fail
        if max_fail and max_fail.exceeded(state.failed_hosts, len(state.hosts)):
            state.halted = True

    async def _rollback(self, state: RunState, hs: HostState) -> None:
        op = self.ops.get("rollback")
        hs.results.append(OpResult(op.id, switch_like=True))
        k = len(hs.results) - 1
        self._note(state, hs.host.name, op.id, "rolling back: an op after the switch failed")
        if state.cancelled:  # by a subscriber of that note: the rollback never starts
            log = self._log(state, hs.host.name, op.id)
            state.set_result(hs, k, OpStatus.CANCELLED, error="cancelled", log=log)
            return
        result = await self._attempts(state, hs, op, k)
        hs.rolled_back = result.status is OpStatus.SUCCESS

    # -- one op ------------------------------------------------------------------------------

    async def _attempts(self, state: RunState, hs: HostState | None, op: Op, k: int) -> OpResult:
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
        self, state: RunState, hs: HostState | None, op: Op, k: int, attempt: int
    ) -> OpResult:
        name = hs.host.name if hs else None
        started = utcnow()
        if hs is not None:
            hs.mark_running(k, started, attempt)
        self.bus.emit(OpStarted(state.run_id, name, op.id, started, attempt))
        tail = TailBuffer()

        def output(data: bytes) -> None:
            tail.add(data)
            self.bus.emit(OpOutput(state.run_id, name, op.id, data))

        slow = self._warn_when_slow(state, name, op)
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
                state.record(hs, k, result)
                if status is OpStatus.CANCELLED:
                    state.exclude(hs, k + 1, HostStatus.CANCELLED)
            elif status is OpStatus.CANCELLED:  # else the caller records it, after the retries
                state.record(None, k, result)
        if outcome and outcome.deferred_units and hs is not None:
            state.deferred.extend((hs.host.name, unit) for unit in outcome.deferred_units)
        return result

    def _warn_when_slow(
        self, state: RunState, host: str | None, op: Op
    ) -> asyncio.TimerHandle | None:
        """Emits OpSlow if the op is still running after its warn_after time."""
        if not op.warn_after:
            return None
        loop = asyncio.get_running_loop()
        started = loop.time()

        def slow() -> None:
            self.bus.emit(OpSlow(state.run_id, host, op.id, loop.time() - started))

        return loop.call_later(op.warn_after, slow)

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
        state: RunState,
        hs: HostState | None,
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

    async def _session(self, hs: HostState, run_id: str) -> Session:
        if hs.session is None:
            session = self.session_factory(hs.host)
            session.hold_for(run_id)
            async with self._connecting:
                await session.connect()  # ConnectError, HostLockedError -> the op fails: why
            hs.session = session
        return hs.session

    # -- bookkeeping -----------------------------------------------------------------------

    def _log(self, state: RunState, host: str | None, op: str) -> str | None:
        return self.log_path(state.run_id, host, op) if self.log_path is not None else None

    def _note(self, state: RunState, host: str | None, op: str, message: str) -> None:
        self.bus.emit(OpNote(state.run_id, host, op, message))

    async def _finish(self, state: RunState) -> Run:
        for i, result in list(state.controller.items()):
            if not result.status.finished:
                op_status = OpStatus.CANCELLED if state.cancelled else OpStatus.SKIPPED
                state.record(None, i, dataclasses.replace(result, status=op_status))
        for hs in state.hosts.values():
            if not hs.status.finished:
                if hs.all_ops_finished() and not state.cancelled and not state.halted:
                    state.finish_host(hs, host_status_of(r.status for r in hs.results))
                else:
                    state.exclude(hs, None, HostStatus.CANCELLED)
        status = run_status_of(
            (hs.status for hs in state.hosts.values()), cancelled=state.cancelled
        )
        run = state.snapshot(status, utcnow())
        self.bus.emit(RunFinished(run))
        await self._deferred_restarts(state)
        return run

    async def _deferred_restarts(self, state: RunState) -> None:
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

    async def _close_sessions(self, state: RunState) -> None:
        sessions = [hs.session for hs in state.hosts.values() if hs.session is not None]

        async def close(session: Session) -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await session.close()

        await asyncio.gather(*(close(s) for s in sessions))
