"""Property-based tests (hypothesis) of the status algebra, the executor and the config loader.

Random fleets, random op outcomes (success, failure, timeout, a lost connection, an
unreachable host), random controller ops, retries, max-fail, rollback, both modes and random
cancellation points: whatever happens, the run's, each host's and each op's statuses agree with
&& semantics, no host starts an op after one of its ops failed (or after the run was
cancelled), and the state store's record equals the Run the executor returned.

Random and mutated fleet.toml files: always a valid inventory or one clear ConfigError (one
line, naming the file), never another exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import string
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fleet.config.inventory import load_inventory, parse_inventory
from fleet.errors import ConfigError
from fleet.events import Event, OpStarted, RunFinished
from fleet.models import (
    ControllerSettings,
    HostStatus,
    MaxFail,
    Mode,
    Op,
    OpResult,
    OpStatus,
    Pipeline,
    Run,
    RunOptions,
    RunStatus,
    Scope,
    host_status_of,
    run_status_of,
)
from fleet.ops.builtin import OpRegistry
from fleet.run.controller import ControllerOpRunner
from fleet.run.runners import OpOutcome
from fleet.state import StateStore
from tests.unit.fakes import Behaviour, FleetScript, make_executor, make_hosts

OP_TIMEOUT = 0.02  # every op's timeout: a hanging op becomes TIMEOUT this fast
HOST_OPS = ("pull", "switch", "test", "check")
CONTROLLER_OPS = ("gate",)
OUTCOMES = ("ok", "fail", "timeout", "lost")

PROPERTY_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------------
# The status algebra on its own

op_statuses = st.lists(st.sampled_from(list(OpStatus)), max_size=6)


@given(op_statuses)
def test_host_status_of_is_and_semantics(statuses: list[OpStatus]) -> None:
    status = host_status_of(statuses)
    if any(s.failed for s in statuses):
        assert status is HostStatus.FAILED
    elif OpStatus.CANCELLED in statuses:
        assert status is HostStatus.CANCELLED
    elif any(not s.finished for s in statuses):
        assert status is HostStatus.RUNNING
    else:
        assert status is HostStatus.COMPLETE
        assert all(s in (OpStatus.SUCCESS, OpStatus.SKIPPED) for s in statuses)


@given(st.lists(st.sampled_from(list(HostStatus)), max_size=6), st.booleans())
def test_run_status_of(hosts: list[HostStatus], cancelled: bool) -> None:
    status = run_status_of(hosts, cancelled=cancelled)
    complete = hosts.count(HostStatus.COMPLETE)
    if cancelled:
        assert status is RunStatus.CANCELLED
    elif hosts and complete == len(hosts):
        assert status is RunStatus.COMPLETE
    elif complete == 0:
        assert status is RunStatus.FAILED
    else:
        assert status is RunStatus.PARTIAL
    assert status.exit_code in (0, 1, 3, 130)


# ---------------------------------------------------------------------------------------------
# Random runs


@dataclass(frozen=True)
class Scenario:
    hosts: tuple[str, ...]
    pipeline: tuple[str, ...]
    outcomes: dict[tuple[str, str], tuple[str, ...]]  # (host or "", op) -> one per attempt
    unreachable: frozenset[str]
    retries: dict[str, int]
    options: RunOptions
    cancel_at: int | None  # cancel when this many events have been emitted
    delays: dict[str, float] = field(default_factory=dict)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    hosts = tuple(f"h{i}" for i in range(draw(st.integers(1, 5))))
    pipeline = tuple(
        draw(
            st.lists(
                st.sampled_from(HOST_OPS + CONTROLLER_OPS), min_size=1, max_size=4, unique=True
            )
        )
    )
    retries = {op: draw(st.integers(0, 2)) for op in pipeline}
    outcomes: dict[tuple[str, str], tuple[str, ...]] = {}
    outcome = st.sampled_from(OUTCOMES)
    for op in pipeline:
        attempts = st.lists(outcome, min_size=1, max_size=retries[op] + 1).map(tuple)
        if op in CONTROLLER_OPS:
            controller = st.lists(st.sampled_from(("ok", "fail", "timeout")), min_size=1)
            outcomes[("", op)] = tuple(draw(controller.map(tuple)))
            continue
        for host in hosts:
            outcomes[(host, op)] = draw(st.one_of(st.just(("ok",)), attempts))
    unreachable = frozenset(draw(st.sets(st.sampled_from(hosts), max_size=len(hosts))))
    max_fail = draw(st.one_of(st.none(), st.integers(0, len(hosts)).map(lambda n: MaxFail(n))))
    options = RunOptions(
        mode=draw(st.sampled_from(list(Mode))),
        max_parallel=draw(st.one_of(st.none(), st.integers(1, len(hosts)))),
        max_fail=max_fail,
        rollback_on_failure=draw(st.booleans()),
    )
    cancel_at = draw(st.one_of(st.none(), st.integers(0, 40)))
    delays = {h: draw(st.sampled_from((0.0, 0.001, 0.003))) for h in hosts}
    return Scenario(hosts, pipeline, outcomes, unreachable, retries, options, cancel_at, delays)


def behaviour(outcome: str, delay: float) -> Behaviour:
    if outcome == "fail":
        return Behaviour(exit_code=1, delay=delay)
    if outcome == "timeout":
        return Behaviour(hang=True)
    if outcome == "lost":
        return Behaviour(error="connection lost", delay=delay)
    return Behaviour(delay=delay, output=b"ok\n")


class ScriptedController(ControllerOpRunner):
    """Controller ops that follow the scenario instead of running anything."""

    def __init__(self, outcomes: dict[str, list[str]]) -> None:
        super().__init__(ControllerSettings(repo="/nonexistent"))
        self.outcomes = outcomes

    async def run(self, op: Op, output: object, *, pr: int | None) -> OpOutcome:
        queue = self.outcomes[op.id]
        outcome = queue.pop(0) if len(queue) > 1 else queue[0]
        if outcome == "timeout":
            await asyncio.Event().wait()
        return OpOutcome(0 if outcome == "ok" else 1)


def registry(scenario: Scenario) -> OpRegistry:
    ops = OpRegistry.with_builtins()
    ops.register(Op("check", "a user host op", command="true", builtin=False))
    ops.register(
        Op("gate", "a controller op", scope=Scope.CONTROLLER, command="true", builtin=False)
    )
    for op in (*HOST_OPS, *CONTROLLER_OPS, "rollback"):
        ops.tune(op, timeout=OP_TIMEOUT, retries=scenario.retries.get(op, 0))
    return ops


@dataclass
class Observed:
    events: list[Event] = field(default_factory=list)
    cancelled_at: int | None = None  # index in `events` of the event that cancelled


@contextlib.contextmanager
def store_in_tmp() -> Iterator[StateStore]:
    with tempfile.TemporaryDirectory() as tmp, StateStore(Path(tmp)) as store:
        yield store


def execute(scenario: Scenario, store: StateStore) -> tuple[Run, FleetScript, Observed]:
    script = FleetScript(unreachable=set(scenario.unreachable))
    for (host, op), outcomes in scenario.outcomes.items():
        if host:
            delay = scenario.delays.get(host, 0.0)
            script.set(host, op, *(behaviour(o, delay) for o in outcomes))
    executor = make_executor(script, ops=registry(scenario))
    executor.controller = ScriptedController(
        {op: list(o) for (host, op), o in scenario.outcomes.items() if not host}
    )
    executor.new_run_id = lambda: f"run-{uuid.uuid4().hex[:12]}"
    executor.log_path = lambda run_id, host, op: str(store.log_path(run_id, host, op))
    executor.bus.subscribe(store.handle)
    observed = Observed()

    def watch(event: Event) -> None:
        observed.events.append(event)
        if len(observed.events) - 1 == scenario.cancel_at and not isinstance(event, RunFinished):
            observed.cancelled_at = len(observed.events) - 1
            executor.cancel()

    executor.bus.subscribe(watch)
    pipeline = Pipeline("p", scenario.pipeline)
    hosts = make_hosts(*scenario.hosts)
    run = asyncio.run(asyncio.wait_for(executor.execute(pipeline, hosts, scenario.options), 30))
    return run, script, observed


def letters(ops: Sequence[OpResult]) -> str:
    code = {
        OpStatus.SUCCESS: "S",
        OpStatus.FAILED: "F",
        OpStatus.TIMEOUT: "T",
        OpStatus.SKIPPED: "K",
        OpStatus.CANCELLED: "C",
        OpStatus.PENDING: "P",
        OpStatus.RUNNING: "R",
    }
    return "".join(code[o.status] for o in ops)


@PROPERTY_SETTINGS
@given(scenarios())
def test_random_runs_obey_and_semantics_and_are_recorded_as_reported(scenario: Scenario) -> None:
    with store_in_tmp() as store:
        run, script, observed = execute(scenario, store)
        recorded = store.get_run(run.run_id)
        assert recorded.to_json() == run.to_json()  # the record is what the executor reported
        assert store.locked_hosts() == {}
    check_run(scenario, run, script, observed)


def check_run(scenario: Scenario, run: Run, script: FleetScript, observed: Observed) -> None:
    host_ops = [op for op in scenario.pipeline if op not in CONTROLLER_OPS]
    cancelled = run.status is RunStatus.CANCELLED  # (a cancel after the last op is too late)
    if cancelled:
        assert observed.cancelled_at is not None
    if observed.cancelled_at is not None and isinstance(
        observed.events[observed.cancelled_at], OpStarted
    ):
        assert cancelled  # a cancel while an op runs always takes effect
    assert isinstance(observed.events[-1], RunFinished)
    assert observed.events[-1].run == run
    # the run's status
    assert run.status is run_status_of((h.status for h in run.hosts.values()), cancelled=cancelled)
    failed_controller = [o.op for o in run.controller_ops if o.status.failed]
    assert [o.op for o in run.controller_ops] == [o for o in scenario.pipeline if o == "gate"]
    for name, host in run.hosts.items():
        ops = list(host.ops)
        rollback = ops[len(host_ops) :]
        ops = ops[: len(host_ops)]
        assert [o.op for o in ops] == host_ops
        pattern = letters(ops)
        # && semantics: successes, then at most one failure followed only by skipped ops, or
        # ops that were cancelled (run cancelled, max-fail) or skipped (a controller op failed)
        assert re.fullmatch(r"S*(?:[FT]K*|C*|K*)", pattern), (name, pattern)
        # a host's status agrees with its ops (or with the controller op that failed)
        if host.failed_op in failed_controller:
            assert host.status is HostStatus.FAILED
            assert "F" not in pattern and "T" not in pattern
        elif not ops:  # a pipeline of controller ops only
            assert host.status is (HostStatus.CANCELLED if cancelled else HostStatus.COMPLETE)
        else:
            assert host.status is host_status_of(o.status for o in ops), (name, pattern)
            if host.status is HostStatus.FAILED:
                assert host.failed_op == next(o.op for o in ops if o.status.failed)
        # rollback only after a failure that followed a successful switch
        if rollback:
            assert [o.op for o in rollback] == ["rollback"]
            assert scenario.options.rollback_on_failure
            switch = next(o for o in ops if o.op == "switch")
            assert switch.status is OpStatus.SUCCESS and ("F" in pattern or "T" in pattern)
            assert host.rolled_back == (rollback[0].status is OpStatus.SUCCESS)
        else:
            assert not host.rolled_back
        check_started(scenario, name, ops, script)
        for op in ops:
            assert op.status.finished
            if op.status in (OpStatus.SUCCESS, OpStatus.FAILED, OpStatus.TIMEOUT):
                assert op.started_at is not None and op.finished_at is not None
            if op.status.failed:
                assert op.error
    check_no_start_after_cancel(observed)


def check_started(scenario: Scenario, name: str, ops: list[OpResult], script: FleetScript) -> None:
    """The ops a host started are a prefix of its pipeline that ends at its first failure."""
    started = [op for host, op in script.started(name) if op != "rollback"]
    distinct = list(dict.fromkeys(started))
    ran = [o.op for o in ops if o.status not in (OpStatus.SKIPPED,) and o.attempts > 0]
    if name in scenario.unreachable:
        assert started == []  # its first op failed at connect; nothing else was tried
        return
    assert distinct == [o.op for o in ops][: len(distinct)]  # in pipeline order
    assert set(distinct) <= set(ran)
    for i, result in enumerate(ops):
        if result.status is not OpStatus.SUCCESS:
            assert not set(distinct) & {o.op for o in ops[i + 1 :]}, (name, started, letters(ops))
            break
    # each op ran at most its retries + 1 times
    for op_id in distinct:
        assert started.count(op_id) <= scenario.retries.get(op_id, 0) + 1


def check_no_start_after_cancel(observed: Observed) -> None:
    if observed.cancelled_at is None:
        return
    late = [e for e in observed.events[observed.cancelled_at + 1 :] if isinstance(e, OpStarted)]
    assert late == [], f"ops started after the run was cancelled: {late}"


# ---------------------------------------------------------------------------------------------
# Random and mutated fleet.toml files

VALID_TOML = """\
[ssh]
identity_file = "~/.ssh/id_ed25519"
known_hosts = ["~/.ssh/known_hosts"]
host_key_policy = "strict"
connect_timeout = 5

[defaults]
user = "root"
branch = "main"
restart_units = ["fleet.service", "nginx.service"]

[controller]
repo = "~/src/nixcfg"
git_name = "fleet bot"
git_email = "fleet@example.org"
pr_ref = "refs/pull/{pr}/head"

[hosts.web1]
address = "10.0.0.1"
tags = ["web", "eu"]
flake_attr = "{name}-prod"

[hosts.db1]
address = "db1.example.org"
port = 2222
sudo = true
user = "deploy"
run_dir = "/run/fleet"

[ops.migrate]
command = "cd {repo} && ./migrate {name} {branch}"
timeout = 60
retries = 1

[ops.test]
timeout = 120

[pipelines.deploy]
ops = ["pull", "migrate", "switch", "test"]
description = "deploy everything"
"""

KEYS = (
    "ssh", "defaults", "controller", "hosts", "ops", "pipelines", "address", "user", "port",
    "repo", "remote", "branch", "sudo", "flake_attr", "restart_units", "system_profile",
    "detach", "run_dir", "identity_file", "tags", "command", "description", "scope",
    "timeout", "warn_after", "retries", "known_hosts", "host_key_policy", "connect_timeout",
    "keepalive_interval", "flake_input", "pr_ref", "git_name", "git_email", "web1", "x",
)  # fmt: skip


ODD_VALUES = (
    '""', "-1", "0", "1e400", "nan", "inf", "true", "[]", "{}", "[1, 'a']",
    "1979-05-27T07:32:00Z", "'-x'", '"$(touch /tmp/x)"', "99999999999999",
)  # fmt: skip


def assert_clear(error: ConfigError, file: str) -> None:
    message = str(error)
    assert message.startswith(f"{file}: "), message
    assert "\n" not in message and "\r" not in message, message
    assert len(message) < 2000


def check_config(text: str) -> None:
    try:
        inventory = parse_inventory(text, path="fleet.toml")
    except ConfigError as error:
        assert_clear(error, "fleet.toml")
        return
    assert all(h.name == name for name, h in inventory.hosts.items())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_random_text_is_a_valid_inventory_or_a_clear_error(text: str) -> None:
    check_config(text)


@st.composite
def mutations(draw: st.DrawFn) -> str:
    text = VALID_TOML
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("delete", "insert", "replace", "dup-line", "drop-line")))
        pos = draw(st.integers(0, len(text)))
        if kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 20)) :]
        elif kind == "insert":
            chunk = draw(
                st.one_of(
                    st.text(string.printable, max_size=10),
                    st.sampled_from(
                        ('"', "'", "[", "]", "{", "}", "=", "\n", "#", ",", "\\", "\x00", "é")
                    ),
                    st.sampled_from(KEYS),
                )
            )
            text = text[:pos] + chunk + text[pos:]
        elif kind == "replace":
            value = draw(
                st.one_of(
                    st.sampled_from(ODD_VALUES),
                    st.text(max_size=8).map(lambda s: '"' + s.replace('"', "") + '"'),
                )
            )
            lines = text.split("\n")
            i = pos % len(lines)
            key, eq, _ = lines[i].partition("=")
            if eq:
                lines[i] = f"{key}= {value}"
            text = "\n".join(lines)
        else:
            lines = text.split("\n")
            i = pos % len(lines)
            if kind == "dup-line":
                lines.insert(i, lines[i])
            else:
                del lines[i]
            text = "\n".join(lines)
    return text


@settings(max_examples=400, deadline=None)
@given(mutations())
def test_mutated_config_is_a_valid_inventory_or_a_clear_error(text: str) -> None:
    check_config(text)


toml_scalars = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(("1979-05-27T07:32:00Z", "1979-05-27", "07:32:00")),
)


def toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if re.fullmatch(r"\d{4}-\d\d-\d\d(T[\d:]+Z)?|\d\d:\d\d:\d\d", value):
            return value
        return (
            '"'
            + "".join(c if c.isalnum() or c in " ._-/{}~@" else f"\\u{ord(c):04x}" for c in value)
            + '"'
        )
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f'"{k}" = {toml_literal(v)}' for k, v in value.items()) + "}"


toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def structured_configs(draw: st.DrawFn) -> str:
    """Known tables and keys with values of any TOML type: the validators' job."""
    out = []
    for table in draw(st.lists(st.sampled_from(KEYS[:6]), max_size=4, unique=True)):
        names = draw(st.lists(st.sampled_from(("web1", "x", "-bad", "a.b", "é")), max_size=2))
        headers = [f'[{table}."{n}"]' for n in names] if table in KEYS[3:6] else [f"[{table}]"]
        for header in headers:
            out.append(header)
            for key in draw(st.lists(st.sampled_from(KEYS[6:]), max_size=5, unique=True)):
                out.append(f"{key} = {toml_literal(draw(toml_values))}")
    return "\n".join(out) + "\n"


@settings(max_examples=300, deadline=None)
@given(structured_configs())
def test_structured_random_config_is_valid_or_a_clear_error(text: str) -> None:
    check_config(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_on_disk_are_a_clear_error(data: bytes) -> None:
    assume(data.strip())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.toml"
        path.write_bytes(data)
        try:
            load_inventory(path, ssh_config=None)
        except ConfigError as error:
            assert_clear(error, str(path))


def test_a_pipeline_may_not_name_an_op_twice() -> None:
    """Each op of a host has one row in the store: a pipeline listing an op twice would lose
    one of its results, so the config refuses it."""
    text = VALID_TOML.replace(
        'ops = ["pull", "migrate", "switch", "test"]', 'ops = ["pull", "switch", "pull"]'
    )
    with pytest.raises(ConfigError, match="more than once") as caught:
        parse_inventory(text, path="fleet.toml")
    assert_clear(caught.value, "fleet.toml")
