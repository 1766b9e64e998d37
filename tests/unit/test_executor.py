"""PipelineExecutor: && semantics, modes, cancellation, max-fail, rollback, retries, locks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from fleet.errors import ConfigError
from fleet.events import Event, HostFinished, OpFinished, RunFinished, RunStarted
from fleet.models import (
    HostStatus,
    MaxFail,
    Mode,
    Op,
    OpStatus,
    Pipeline,
    Run,
    RunOptions,
    RunStatus,
    Scope,
)
from fleet.ops.builtin import OpRegistry
from fleet.ops.pipelines import PipelineRegistry
from fleet.run.runners import OpOutcome
from tests.unit.fakes import Behaviour, FleetScript, make_executor, make_hosts, statuses

T = TypeVar("T")
DO_ALL = Pipeline("do-all", ("pull", "switch", "test"))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_all_hosts_complete() -> None:
    script = FleetScript()
    result = run(make_executor(script).execute(DO_ALL, make_hosts("a", "b", "c")))
    assert result.status is RunStatus.COMPLETE
    for name in "abc":
        assert result.hosts[name].status is HostStatus.COMPLETE
        assert statuses(result, name) == ["SUCCESS"] * 3
        assert result.hosts[name].failed_op is None
    switch = result.hosts["a"].ops[1]
    assert (switch.system_before, switch.system_after) == ("/nix/store/old-a", "/nix/store/new-a")


def test_failed_host_is_excluded_from_later_ops() -> None:
    script = FleetScript()
    script.set("b", "switch", Behaviour(exit_code=1))
    result = run(make_executor(script).execute(DO_ALL, make_hosts("a", "b", "c")))
    assert result.status is RunStatus.PARTIAL
    assert statuses(result, "b") == ["SUCCESS", "FAILED", "SKIPPED"]
    assert result.hosts["b"].status is HostStatus.FAILED
    assert result.hosts["b"].failed_op == "switch"
    assert ("b", "test") not in script.started()
    assert statuses(result, "a") == statuses(result, "c") == ["SUCCESS"] * 3


def test_every_host_failing_is_failed() -> None:
    script = FleetScript()
    for h in "ab":
        script.set(h, "pull", Behaviour(exit_code=1))
    result = run(make_executor(script).execute(DO_ALL, make_hosts("a", "b")))
    assert result.status is RunStatus.FAILED
    assert script.started() == [("a", "pull"), ("b", "pull")]


def test_unreachable_host_fails_its_first_op_with_the_reason() -> None:
    script = FleetScript(unreachable={"b"})
    result = run(make_executor(script).execute(DO_ALL, make_hosts("a", "b")))
    assert result.status is RunStatus.PARTIAL
    pull = result.hosts["b"].ops[0]
    assert pull.status is OpStatus.FAILED
    assert pull.error == "connection refused"
    assert statuses(result, "b") == ["FAILED", "SKIPPED", "SKIPPED"]


def test_lockstep_finishes_each_op_everywhere_before_the_next() -> None:
    script = FleetScript()
    script.set("a", "pull", Behaviour(delay=0.05))
    run(make_executor(script).execute(DO_ALL, make_hosts("a", "b")))
    order = [(e, h, o) for e, h, o in script.calls]
    # b may not start switch before a has finished pull
    assert order.index(("end", "a", "pull")) < order.index(("start", "b", "switch"))


def test_streaming_lets_each_host_go_ahead() -> None:
    script = FleetScript()
    script.set("a", "pull", Behaviour(delay=0.2))
    options = RunOptions(mode=Mode.STREAMING)
    result = run(make_executor(script).execute(DO_ALL, make_hosts("a", "b"), options))
    order = script.calls
    assert order.index(("end", "b", "test")) < order.index(("end", "a", "pull"))
    assert result.status is RunStatus.COMPLETE


def test_streaming_keeps_controller_ops_as_barriers(mocker) -> None:  # type: ignore[no-untyped-def]
    ops = OpRegistry.with_builtins()
    ops.register(
        Op("gate", "a controller step", scope=Scope.CONTROLLER, command="true", builtin=False)
    )
    pipeline = Pipeline("p", ("pull", "gate", "switch"))
    script = FleetScript()
    script.set("a", "pull", Behaviour(delay=0.1))
    executor = make_executor(script, ops=ops)
    seen: list[list[tuple[str, str]]] = []

    async def controller_run(op, output, *, pr):  # type: ignore[no-untyped-def]
        seen.append(list(script.started()))
        return OpOutcome(0)

    mocker.patch.object(executor.controller, "run", side_effect=controller_run)
    result = run(executor.execute(pipeline, make_hosts("a", "b"), RunOptions(mode=Mode.STREAMING)))
    assert seen == [[("b", "pull"), ("a", "pull")]] or seen == [[("a", "pull"), ("b", "pull")]]
    assert result.status is RunStatus.COMPLETE
    assert [o.status for o in result.controller_ops] == [OpStatus.SUCCESS]


def test_failed_controller_op_fails_every_host(mocker) -> None:  # type: ignore[no-untyped-def]
    script = FleetScript()
    executor = make_executor(script)
    mocker.patch.object(executor.controller, "run", return_value=OpOutcome(1, error="conflict"))
    pipeline = Pipeline("merge-deploy", ("merge-pr", "pull", "switch", "test"))
    result = run(executor.execute(pipeline, make_hosts("a", "b"), RunOptions(pr=7)))
    assert result.status is RunStatus.FAILED
    assert result.controller_ops[0].status is OpStatus.FAILED
    for name in "ab":
        assert result.hosts[name].status is HostStatus.FAILED
        assert result.hosts[name].failed_op == "merge-pr"
        assert statuses(result, name) == ["SKIPPED"] * 3
    assert script.started() == []


def test_merge_pr_needs_pr() -> None:
    with pytest.raises(ConfigError, match="--pr"):
        run(
            make_executor(FleetScript()).execute(
                Pipeline("m", ("merge-pr", "pull")), make_hosts("a")
            )
        )


def test_cancellation_mid_pipeline() -> None:
    script = FleetScript()
    script.set("a", "switch", Behaviour(hang=True))
    script.set("b", "switch", Behaviour(hang=True))
    events: list[Event] = []
    executor = make_executor(script, events=events)

    async def scenario() -> Run:
        task = asyncio.create_task(executor.execute(DO_ALL, make_hosts("a", "b")))
        while len(script.started()) < 4:
            await asyncio.sleep(0.01)
        executor.cancel()
        return await task

    result = run(scenario())
    assert result.status is RunStatus.CANCELLED
    assert sorted(script.cancelled) == [("a", "switch"), ("b", "switch")]
    for name in "ab":
        assert result.hosts[name].status is HostStatus.CANCELLED
        assert statuses(result, name) == ["SUCCESS", "CANCELLED", "CANCELLED"]
    assert isinstance(events[-1], RunFinished)
    assert sorted(script.closed) == ["a", "b"]


def test_cancelling_the_task_itself_still_records_the_run() -> None:
    script = FleetScript()
    script.set("a", "pull", Behaviour(hang=True))
    events: list[Event] = []
    executor = make_executor(script, events=events)

    async def scenario() -> None:
        task = asyncio.create_task(executor.execute(DO_ALL, make_hosts("a")))
        while not script.started():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    finished = [e for e in events if isinstance(e, RunFinished)]
    assert finished and finished[0].run.status is RunStatus.CANCELLED


def test_timeout_is_timeout_not_failure() -> None:
    ops = OpRegistry.with_builtins()
    ops.tune("pull", timeout=0.05)
    script = FleetScript()
    script.set("a", "pull", Behaviour(hang=True))
    result = run(make_executor(script, ops=ops).execute(DO_ALL, make_hosts("a", "b")))
    assert statuses(result, "a") == ["TIMEOUT", "SKIPPED", "SKIPPED"]
    assert result.hosts["a"].status is HostStatus.FAILED
    assert result.hosts["a"].ops[0].error == "timed out after 0.05s"
    assert ("a", "pull") in script.cancelled
    assert result.status is RunStatus.PARTIAL


def test_retries_rerun_a_failed_op() -> None:
    ops = OpRegistry.with_builtins()
    ops.tune("pull", retries=2)
    script = FleetScript()
    script.set("a", "pull", Behaviour(exit_code=1), Behaviour(exit_code=1), Behaviour())
    result = run(make_executor(script, ops=ops).execute(DO_ALL, make_hosts("a")))
    assert result.status is RunStatus.COMPLETE
    assert result.hosts["a"].ops[0].attempts == 3


@pytest.mark.parametrize(
    ("max_fail", "expected_started_switch"),
    [("0", 0), ("1", 1), ("25%", 1)],
)
def test_max_fail_stops_starting_new_work(max_fail: str, expected_started_switch: int) -> None:
    script = FleetScript()
    # hosts a,b fail pull; with max-parallel 1 they run one at a time
    script.set("a", "pull", Behaviour(exit_code=1))
    script.set("b", "pull", Behaviour(exit_code=1))
    options = RunOptions(max_fail=MaxFail.parse(max_fail), max_parallel=1)
    hosts = make_hosts("a", "b", "c", "d")
    result = run(make_executor(script).execute(DO_ALL, hosts, options))
    pulls = [h for h, o in script.started() if o == "pull"]
    assert pulls == ["a", "b", "c", "d"][: expected_started_switch + 1]
    for name in "cd":
        if (name, "pull") not in script.started():
            assert result.hosts[name].status is HostStatus.CANCELLED
            assert statuses(result, name) == ["CANCELLED"] * 3
    assert result.status is RunStatus.FAILED


def test_max_fail_parse() -> None:
    assert MaxFail.parse("3") == MaxFail(count=3)
    assert MaxFail.parse("10%") == MaxFail(percent=10.0)
    assert MaxFail.parse("10%").exceeded(2, 10) is True
    assert MaxFail.parse("10%").exceeded(1, 10) is False
    for bad in ("x", "-1", "101%", ""):
        with pytest.raises(ConfigError):
            MaxFail.parse(bad)


def test_max_parallel_limits_concurrency() -> None:
    script = FleetScript()
    for h in "abcd":
        script.set(h, "pull", Behaviour(delay=0.02))
    run(
        make_executor(script).execute(
            Pipeline("p", ("pull",)), make_hosts(*"abcd"), RunOptions(max_parallel=2)
        )
    )
    running, peak = 0, 0
    for event, _h, _o in script.calls:
        running += 1 if event == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def test_rollback_on_failure_after_switch() -> None:
    script = FleetScript()
    script.set("a", "test", Behaviour(exit_code=1))
    options = RunOptions(rollback_on_failure=True)
    result = run(make_executor(script).execute(DO_ALL, make_hosts("a", "b"), options))
    a = result.hosts["a"]
    assert a.status is HostStatus.FAILED
    assert a.failed_op == "test"
    assert [o.op for o in a.ops] == ["pull", "switch", "test", "rollback"]
    assert a.ops[3].status is OpStatus.SUCCESS
    assert a.rolled_back is True
    assert ("b", "rollback") not in script.started()


def test_no_rollback_when_switch_itself_failed() -> None:
    script = FleetScript()
    script.set("a", "switch", Behaviour(exit_code=1))
    result = run(
        make_executor(script).execute(DO_ALL, make_hosts("a"), RunOptions(rollback_on_failure=True))
    )
    assert [o.op for o in result.hosts["a"].ops] == ["pull", "switch", "test"]
    assert result.hosts["a"].rolled_back is False


class Locks:
    def __init__(self, held: dict[str, str]) -> None:
        self.held = held

    def acquire_hosts(self, run_id: str, hosts: list[str]) -> dict[str, str]:
        return {h: self.held[h] for h in hosts if h in self.held}


def test_host_held_by_another_run_is_refused() -> None:
    script = FleetScript()
    executor = make_executor(script, locks=Locks({"b": "20260101-000000-abcd"}))
    result = run(executor.execute(DO_ALL, make_hosts("a", "b")))
    assert result.status is RunStatus.PARTIAL
    assert result.hosts["b"].ops[0].error == "host is held by run 20260101-000000-abcd"
    assert statuses(result, "b") == ["FAILED", "SKIPPED", "SKIPPED"]
    assert all(h == "a" for h, _ in script.started())


def test_retry_starts_each_host_where_it_stopped() -> None:
    script = FleetScript()
    result = run(
        make_executor(script).execute(
            DO_ALL, make_hosts("a", "b"), retry_of="r1", start_at={"a": 1, "b": 2}
        )
    )
    assert script.started() == [("a", "switch"), ("a", "test"), ("b", "test")]
    assert statuses(result, "a") == ["SKIPPED", "SUCCESS", "SUCCESS"]
    assert result.hosts["a"].ops[0].error == "done in run r1"
    assert result.status is RunStatus.COMPLETE
    assert result.retry_of == "r1"


def test_events_are_ordered_and_complete() -> None:
    script = FleetScript()
    script.set("b", "pull", Behaviour(exit_code=1))
    events: list[Event] = []
    result = run(make_executor(script, events=events).execute(DO_ALL, make_hosts("a", "b")))
    assert isinstance(events[0], RunStarted)
    assert isinstance(events[-1], RunFinished)
    finished_hosts = [e.result.name for e in events if isinstance(e, HostFinished)]
    assert sorted(finished_hosts) == ["a", "b"]
    # every op of every host ends with exactly one final OpFinished matching the result
    last: dict[tuple[str | None, str], OpStatus] = {}
    for e in events:
        if isinstance(e, OpFinished):
            last[(e.host, e.result.op)] = e.result.status
    for name, host in result.hosts.items():
        for op in host.ops:
            assert last[(name, op.op)] is op.status


def test_pipeline_registry_rejects_duplicates_and_unknown_ops() -> None:
    ops = OpRegistry.with_builtins()
    registry = PipelineRegistry.with_builtins(ops)
    assert [p.id for p in registry] == ["do-all", "merge-deploy", "update-agent", "force-update"]
    assert registry.get("do-all").ops == ("pull", "switch", "test")
    with pytest.raises(ConfigError, match="duplicate"):
        registry.register(Pipeline("do-all", ("pull",)))
    with pytest.raises(ConfigError, match="unknown op 'nope'"):
        registry.register(Pipeline("x", ("pull", "nope")))
    with pytest.raises(ConfigError, match="at least one op"):
        registry.register(Pipeline("y", ()))
    registry.register(Pipeline("canary", ("pull", "switch")))
    assert "canary" in registry


def test_op_registry_tune_only_tunables() -> None:
    ops = OpRegistry.with_builtins()
    ops.tune("switch", timeout=7200.0)
    assert ops.get("switch").timeout == 7200.0
    with pytest.raises(ConfigError, match="may change only"):
        ops.tune("switch", command="rm -rf /")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        ops.register(Op("x", "", command="echo {password}", builtin=False))
    assert dataclasses.replace(ops.get("pull")).timeout == 300.0
