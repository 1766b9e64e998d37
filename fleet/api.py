"""The one library API the CLI and the dashboard call.

`Fleet` ties an inventory (fleet.toml), a state store and the executor together: plan a run,
execute it with subscribers attached, retry a run, read the record. Nothing here prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from fleet.config.inventory import Inventory, load_inventory
from fleet.config.selection import select_hosts
from fleet.errors import ConfigError
from fleet.events import EventBus, Subscriber
from fleet.models import (
    CONTROLLER,
    Host,
    HostResult,
    HostStatus,
    Op,
    OpStatus,
    Pipeline,
    Privilege,
    Run,
    RunOptions,
    Scope,
    new_run_id,
)
from fleet.ops import builtin as ops
from fleet.run.executor import PipelineExecutor
from fleet.state import StateStore
from fleet.transport.base import SessionFactory


def state_dir_from(explicit: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """`--state-dir`, else `$FLEET_STATE_DIR`, else the user state dir for fleet."""
    if explicit:
        return Path(explicit).expanduser()
    if env.get("FLEET_STATE_DIR"):
        return Path(env["FLEET_STATE_DIR"]).expanduser()
    return Path(platformdirs.user_state_dir("fleet"))


def ssh_session_factory(inventory: Inventory) -> SessionFactory:
    from fleet.transport.hostkeys import KnownHostsCache
    from fleet.transport.ssh import SshSession

    known_hosts = KnownHostsCache()  # parsed once for all the hosts, not once per host
    return lambda host: SshSession(host, inventory.ssh, known_hosts=known_hosts)


@dataclass(frozen=True)
class PlannedRun:
    """What a run will do: the pipeline, the hosts, and where each host starts."""

    pipeline: Pipeline
    hosts: tuple[Host, ...]
    options: RunOptions
    retry_of: str | None = None
    start_at: Mapping[str, int] | None = None


class Fleet:
    def __init__(
        self,
        inventory: Inventory,
        store: StateStore,
        *,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.inventory = inventory
        self.store = store
        self.session_factory = session_factory or ssh_session_factory(inventory)

    @classmethod
    def open(cls, config: Path, state_dir: Path) -> Fleet:
        inventory = load_inventory(config)
        store = StateStore(state_dir)
        return cls(inventory, store)

    def close(self) -> None:
        self.store.close()

    # -- planning ------------------------------------------------------------------------------

    def pipeline(self, pipeline_id: str) -> Pipeline:
        if pipeline_id.startswith("op:"):
            return self.single_op(pipeline_id[3:])
        return self.inventory.pipelines.get(pipeline_id)

    def single_op(self, op_id: str) -> Pipeline:
        op = self.inventory.ops.get(op_id)
        return Pipeline(f"op:{op.id}", (op.id,), op.description)

    def plan(self, pipeline_id: str, options: RunOptions) -> PlannedRun:
        pipeline = self.pipeline(pipeline_id)
        hosts = tuple(select_hosts(self.inventory, options.selector))
        plan = PlannedRun(pipeline, hosts, options)
        self.executor(EventBus()).validate(pipeline, options)
        return plan

    def plan_retry(self, run_id: str) -> PlannedRun:
        """The hosts of `run_id` that did not complete, each from the op where it stopped."""
        old = self.store.get_run(self.store.resolve_run_id(run_id))
        pipeline = self.pipeline(old.pipeline)
        options = RunOptions.from_json(old.options)
        host_positions = [
            i
            for i, op_id in enumerate(pipeline.ops)
            if self.inventory.ops.get(op_id).scope is Scope.HOST
        ]
        hosts: list[Host] = []
        start_at: dict[str, int] = {}
        for name, result in old.hosts.items():
            if result.status is HostStatus.COMPLETE:
                continue
            if name not in self.inventory.hosts:
                raise ConfigError(f"run {old.run_id}: host {name!r} is no longer in the inventory")
            hosts.append(self.inventory.hosts[name])
            start_at[name] = retry_start(pipeline, host_positions, result)
        if not hosts:
            raise ConfigError(f"run {old.run_id}: every host completed; nothing to retry")
        return PlannedRun(pipeline, tuple(hosts), options, old.run_id, start_at)

    def dry_run(self, plan: PlannedRun) -> list[tuple[str, str, str]]:
        """(host or 'controller', op, the exact command) for every step the run would take."""
        rows: list[tuple[str, str, str]] = []
        for op_id in plan.pipeline.ops:
            op = self.inventory.ops.get(op_id)
            if op.scope is Scope.CONTROLLER:
                rows.append((CONTROLLER, op.id, describe_controller_op(self, op, plan)))
                continue
            for host in plan.hosts:
                rows.append((host.name, op.id, describe_host_op(op, host)))
        return rows

    # -- running -------------------------------------------------------------------------------

    def executor(self, bus: EventBus) -> PipelineExecutor:
        return PipelineExecutor(
            ops=self.inventory.ops,
            controller=self.inventory.controller,
            session_factory=self.session_factory,
            bus=bus,
            locks=self.store,
            new_run_id=new_run_id,
            log_path=lambda run_id, host, op: str(self.store.log_path(run_id, host, op)),
        )

    def prepare(self, subscribers: Sequence[Subscriber] = ()) -> PipelineExecutor:
        """An executor whose events reach the store first, then each subscriber."""
        bus = EventBus()
        bus.subscribe(self.store.handle)
        for subscriber in subscribers:
            bus.subscribe(subscriber)
        return self.executor(bus)

    async def execute(self, plan: PlannedRun, executor: PipelineExecutor) -> Run:
        return await executor.execute(
            plan.pipeline,
            plan.hosts,
            plan.options,
            retry_of=plan.retry_of,
            start_at=plan.start_at,
        )


def retry_start(pipeline: Pipeline, host_positions: Sequence[int], result: HostResult) -> int:
    """The pipeline index where a host that did not complete starts again."""
    if result.failed_op in pipeline.ops:
        return pipeline.ops.index(result.failed_op)
    for pos, op in zip(host_positions, result.ops, strict=False):
        done_before = op.status is OpStatus.SKIPPED and (op.error or "").startswith("done in")
        if op.status is not OpStatus.SUCCESS and not done_before:
            return pos
    return 0


def describe_host_op(op: Op, host: Host) -> str:
    if not (op.builtin and op.id in ops.DETACHED_OPS):
        return ops.host_script(op, host)
    argv = Privilege.of(host).argv(ops.rebuild_argv(host, op.id))
    return ops.j(argv) + f"   # detached ({host.detach.value})"


def describe_controller_op(fleet: Fleet, op: Op, plan: PlannedRun) -> str:
    settings = fleet.inventory.controller
    repo = str(Path(settings.repo).expanduser())
    if not op.builtin:
        return op.command or ""
    if op.id == "merge-pr":
        merge = ops.merge_pr_steps(settings, repo, plan.options.pr or 0)
        return "\n".join(ops.j(s) for s in merge)
    if op.id == "bump-flake":
        bump = ops.bump_flake_steps(settings, repo, (2, 19))
        return "\n".join(ops.j(s) for group in bump.values() for s in group)
    return op.id
