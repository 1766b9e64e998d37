"""The in-memory record of a run while the executor runs it.

`RunState` holds the results of the controller ops and, for each host, a `HostState`: its op
results, its status, its session. The executor decides what runs next; each op result it
settles and each host it takes out of the pipeline goes through a method here, which emits the
change as it is made (fleet.events): `OpFinished` for an op's result, `HostFinished` when a host
leaves the pipeline. Nothing here awaits.

A host op is indexed by `k`, its place among the pipeline's host ops; a controller op by its
index in the pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleet.events import EventBus, HostFinished, OpFinished
from fleet.models import (
    Host,
    HostResult,
    HostStatus,
    Op,
    OpResult,
    OpStatus,
    Pipeline,
    Run,
    RunOptions,
    RunStatus,
    Scope,
    utcnow,
)
from fleet.transport.base import Session


@dataclass
class HostState:
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

    def mark_running(self, k: int, started: datetime, attempt: int) -> None:
        """Op `k` starts its attempt: recorded here only (`OpStarted` tells the subscribers)."""
        self.status = HostStatus.RUNNING
        self.results[k] = dataclasses.replace(
            self.results[k], status=OpStatus.RUNNING, started_at=started, attempts=attempt
        )

    def all_ops_finished(self) -> bool:
        return all(r.status.finished for r in self.results)

    def switched_before(self, k: int) -> bool:
        """A switch-like op other than a rollback succeeded before op `k`."""
        return any(
            r.switch_like and r.op != "rollback" and r.status is OpStatus.SUCCESS
            for r in self.results[:k]
        )


@dataclass
class RunState:
    bus: EventBus
    run_id: str
    pipeline: Pipeline
    ops: list[Op]
    options: RunOptions
    retry_of: str | None
    started_at: datetime
    hosts: dict[str, HostState]
    controller: dict[int, OpResult] = field(default_factory=dict)
    failed_hosts: int = 0
    halted: bool = False  # max-fail reached: start nothing new
    cancelled: bool = False
    deferred: list[tuple[str, str]] = field(default_factory=list)  # (host, unit)

    @classmethod
    def create(
        cls,
        bus: EventBus,
        run_id: str,
        pipeline: Pipeline,
        ops: list[Op],
        hosts: Sequence[Host],
        options: RunOptions,
        retry_of: str | None,
        start_at: Mapping[str, int],
    ) -> RunState:
        """Every op PENDING; each host starts at its index in `start_at` (a retry), else 0."""
        host_ops = [op for op in ops if op.scope is Scope.HOST]
        states = {
            h.name: HostState(
                host=h,
                results=[OpResult(op.id, switch_like=op.switch_like) for op in host_ops],
                start=start_at.get(h.name, 0),
            )
            for h in hosts
        }
        controller = {
            i: OpResult(op.id) for i, op in enumerate(ops) if op.scope is Scope.CONTROLLER
        }
        return cls(
            bus=bus,
            run_id=run_id,
            pipeline=pipeline,
            ops=ops,
            options=options,
            retry_of=retry_of,
            started_at=utcnow(),
            hosts=states,
            controller=controller,
        )

    def host_positions(self) -> list[int]:
        return [i for i, op in enumerate(self.ops) if op.scope is Scope.HOST]

    def first_to_run(self, hs: HostState) -> int | None:
        for k, pos in enumerate(self.host_positions()):
            if pos >= hs.start and not hs.results[k].status.finished:
                return k
        return None

    def snapshot(
        self, status: RunStatus = RunStatus.RUNNING, finished: datetime | None = None
    ) -> Run:
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

    # -- changes, each emitted -----------------------------------------------------------------

    def record(self, hs: HostState | None, k: int, result: OpResult) -> None:
        """An op's result: host op `k` of `hs`, or controller op `k` when `hs` is None."""
        if hs is None:
            self.controller[k] = result
        else:
            hs.results[k] = result
        self.bus.emit(OpFinished(self.run_id, hs.host.name if hs else None, result))

    def set_result(self, hs: HostState, k: int, status: OpStatus, **changes: Any) -> None:
        """Host op `k` of `hs` ends with `status` without running (or running no more)."""
        result = dataclasses.replace(hs.results[k], status=status, **changes)
        if status.finished and result.finished_at is None and status is not OpStatus.SKIPPED:
            result = dataclasses.replace(result, finished_at=utcnow())
        self.record(hs, k, result)

    def mark_done_before(self) -> None:
        """A retry skips the ops each host already completed in the earlier run."""
        if self.retry_of is None:
            return
        note = f"done in run {self.retry_of}"
        for hs in self.hosts.values():
            for k, pos in enumerate(self.host_positions()):
                if pos < hs.start:
                    self.set_result(hs, k, OpStatus.SKIPPED, error=note)
        for i in list(self.controller):
            if all(hs.start > i for hs in self.hosts.values()):
                skipped = dataclasses.replace(
                    self.controller[i], status=OpStatus.SKIPPED, error=note
                )
                self.record(None, i, skipped)

    def finish_host(self, hs: HostState, status: HostStatus) -> None:
        hs.status = status
        self.bus.emit(HostFinished(self.run_id, hs.snapshot()))

    def exclude(self, hs: HostState, from_k: int | None, status: HostStatus) -> None:
        """The host leaves the pipeline: its unfinished ops become SKIPPED (or CANCELLED)."""
        op_status = OpStatus.CANCELLED if status is HostStatus.CANCELLED else OpStatus.SKIPPED
        for k, r in enumerate(hs.results):
            if (from_k is None or k >= from_k) and not r.status.finished:
                self.set_result(hs, k, op_status)
        if status is HostStatus.FAILED and hs.failed_op is None:
            failed = [r.op for r in hs.results if r.status.failed]
            hs.failed_op = failed[0] if failed else None
        if any(r.status.failed for r in hs.results) or hs.failed_op:
            status = HostStatus.FAILED
        self.finish_host(hs, status)
