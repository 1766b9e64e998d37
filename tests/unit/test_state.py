"""The state store against a real SQLite file, real log files and real processes."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from fleet.errors import StateError
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
from fleet.models import HostResult, HostStatus, OpResult, OpStatus, Run, RunStatus, new_run_id
from fleet.state import (
    TAIL_BYTES,
    StateStore,
    process_alive,
    process_start_time,
)
from fleet.state.logs import OpLogs
from fleet.state.recorder import EventRecorder

T0 = datetime(2026, 11, 26, 0, 30, 12, 123456, tzinfo=UTC)
OPS = ("pull", "switch", "test")
HOSTS = ("web-1", "db-1")  # not in alphabetical order: the store keeps the run's order
SYSTEM_1 = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-web-1-24.05"
REPO = Path(__file__).resolve().parents[2]
SYSTEM_2 = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-web-1-24.05"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


def run_started(
    run_id: str, *, pid: int | None = None, hosts: tuple[str, ...] = HOSTS, start: float = 0
) -> RunStarted:
    run = Run(
        run_id=run_id,
        pipeline="deploy",
        started_at=at(start),
        retry_of=None,
        options={"mode": "lockstep", "max_parallel": 2, "hosts": list(hosts)},
        hosts={
            name: HostResult(
                name, ops=tuple(OpResult(op, switch_like=op == "switch") for op in OPS)
            )
            for name in hosts
        },
        controller_ops=(OpResult("bump"),),
    )
    return RunStarted(run=run, pid=pid or os.getpid(), ops=OPS, controller_ops=("bump",))


def feed_deploy(store: StateStore, run_id: str) -> Run:
    """A realistic run: a controller op, web-1 completes (with a retry), db-1 fails at pull.

    Returns the final Run the executor would emit, with `log` left to the store."""
    bus = EventBus()
    bus.subscribe(store.handle)
    started = run_started(run_id)
    bus.emit(started)

    bump = OpResult("bump", OpStatus.SUCCESS, 0, at(1), at(2), attempts=1, tail="bumped\n")
    bus.emit(OpStarted(run_id, None, "bump", at(1)))
    bus.emit(OpOutput(run_id, None, "bump", b"bumped\n"))
    bus.emit(OpFinished(run_id, None, bump))

    web: list[OpResult] = []
    for i, op in enumerate(OPS):
        bus.emit(OpStarted(run_id, "web-1", op, at(10 + i)))
        bus.emit(OpOutput(run_id, "web-1", op, f"{op} output\n".encode()))
        if op == "test":
            bus.emit(OpSlow(run_id, "web-1", op, 30.0))
            bus.emit(OpNote(run_id, "web-1", op, "attempt 1 failed (exit 1); retrying"))
            bus.emit(OpStarted(run_id, "web-1", op, at(10.5 + i), attempt=2))
            bus.emit(OpOutput(run_id, "web-1", op, b"test passed\n"))
        result = OpResult(
            op,
            OpStatus.SUCCESS,
            0,
            at(10 + i),
            at(11 + i),
            attempts=2 if op == "test" else 1,
            tail=f"{op} output\n",
            switch_like=op == "switch",
            system_before=SYSTEM_1 if op == "switch" else None,
            system_after=SYSTEM_2 if op == "switch" else None,
        )
        bus.emit(OpFinished(run_id, "web-1", result))
        web.append(result)
    web_host = HostResult("web-1", HostStatus.COMPLETE, ops=tuple(web))
    bus.emit(HostFinished(run_id, web_host))

    bus.emit(OpStarted(run_id, "db-1", "pull", at(10)))
    bus.emit(OpOutput(run_id, "db-1", "pull", b"fatal: couldn't find remote ref main\n"))
    pull = OpResult(
        "pull", OpStatus.FAILED, 128, at(10), at(12), "exit status 128", attempts=1, tail="fatal"
    )
    bus.emit(OpFinished(run_id, "db-1", pull))
    skipped = tuple(OpResult(op, OpStatus.SKIPPED, switch_like=op == "switch") for op in OPS[1:])
    db_host = HostResult("db-1", HostStatus.FAILED, "pull", (pull, *skipped))
    bus.emit(HostFinished(run_id, db_host))

    final = dataclasses.replace(
        started.run,
        status=RunStatus.PARTIAL,
        finished_at=at(20),
        controller_ops=(bump,),
        hosts={"web-1": web_host, "db-1": db_host},
    )
    bus.emit(RunFinished(final))
    return final


def with_logs(store: StateStore, run: Run) -> Run:
    """`run` as the store records it: each op that wrote output points at its log."""

    def logged(host: str | None, op: OpResult) -> OpResult:
        path = store.log_path(run.run_id, host, op.op)
        return dataclasses.replace(op, log=str(path) if path.exists() else None)

    return dataclasses.replace(
        run,
        controller_ops=tuple(logged(None, op) for op in run.controller_ops),
        hosts={
            name: dataclasses.replace(host, ops=tuple(logged(name, op) for op in host.ops))
            for name, host in run.hosts.items()
        },
    )


def python(code: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (another fleet process sharing the store)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=check,
        cwd=REPO,
    )


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def db_execute(state_dir: Path, sql: str, *args: object) -> None:
    """Change a row behind the store's back (as another machine or an old process would)."""
    with sqlite3.connect(state_dir / "fleet.db") as conn:
        conn.execute(sql, args)
    conn.close()


# ---------------------------------------------------------------------------------------------
# Recording runs


def test_a_run_reads_back_as_it_was_fed(store: StateStore) -> None:
    final = feed_deploy(store, "20261126-003012-3f9a")

    recorded = store.get_run("20261126-003012-3f9a")

    assert recorded == with_logs(store, final)
    assert list(recorded.hosts) == list(HOSTS)
    assert [op.op for op in recorded.hosts["db-1"].ops] == list(OPS)
    assert [op.status for op in recorded.hosts["db-1"].ops] == [
        OpStatus.FAILED,
        OpStatus.SKIPPED,
        OpStatus.SKIPPED,
    ]
    assert recorded.hosts["db-1"].ops[1].log is None
    assert recorded.hosts["web-1"].ops[1].to_json()["system_after"] == SYSTEM_2
    assert json.dumps(recorded.to_json()) == json.dumps(with_logs(store, final).to_json())
    assert store.latest_run() == recorded


def test_another_process_reads_the_same_record(store: StateStore) -> None:
    feed_deploy(store, "20261126-003012-3f9a")

    child = python(f"""
        import json
        from pathlib import Path
        from fleet.state import StateStore
        with StateStore(Path({str(store.state_dir)!r})) as store:
            print(json.dumps(store.get_run("20261126-003012-3f9a").to_json()))
        """)

    assert child.stdout.strip() == json.dumps(store.get_run("20261126-003012-3f9a").to_json())


def test_the_record_is_written_as_the_run_goes(store: StateStore) -> None:
    run_id = "20261126-003012-3f9a"
    store.handle(run_started(run_id))
    store.handle(OpStarted(run_id, "web-1", "pull", at(10)))
    store.handle(OpOutput(run_id, "web-1", "pull", b"Updating 1a2b..3c4d\n"))

    child = python(f"""
        import json
        from pathlib import Path
        from fleet.state import StateStore
        with StateStore(Path({str(store.state_dir)!r})) as store:
            run = store.get_run({run_id!r})
            print(json.dumps(run.to_json()))
            print(store.read_log({run_id!r}, "web-1", "pull").decode())
        """)
    seen_json, log = child.stdout.split("\n", 1)
    seen = json.loads(seen_json)

    assert seen["status"] == "RUNNING"
    assert seen["hosts"]["web-1"]["status"] == "RUNNING"
    assert [op["status"] for op in seen["hosts"]["web-1"]["ops"]] == [
        "RUNNING",
        "PENDING",
        "PENDING",
    ]
    assert seen["hosts"]["web-1"]["ops"][0]["started_at"] == "2026-11-26T00:30:22.123456Z"
    assert seen["hosts"]["db-1"]["status"] == "PENDING"
    assert seen["controller"]["ops"][0]["status"] == "PENDING"
    assert log == "Updating 1a2b..3c4d\n\n"


def test_ops_the_run_did_not_announce_are_recorded_after_the_others(store: StateStore) -> None:
    run_id = "20261126-003012-3f9a"
    store.handle(run_started(run_id))
    store.handle(OpStarted(run_id, "web-1", "rollback", at(5)))
    store.handle(OpFinished(run_id, "web-1", OpResult("rollback", OpStatus.SUCCESS, 0, at(5))))

    ops = store.get_run(run_id).hosts["web-1"].ops

    assert [op.op for op in ops] == [*OPS, "rollback"]
    assert ops[-1].status is OpStatus.SUCCESS
    assert ops[-1].attempts == 0  # the result's, as the executor reported it


def test_a_run_id_is_recorded_once(store: StateStore) -> None:
    store.handle(run_started("20261126-003012-3f9a"))

    with pytest.raises(StateError, match="run 20261126-003012-3f9a is already recorded"):
        store.handle(run_started("20261126-003012-3f9a"))


def test_events_of_an_unknown_run_are_refused(store: StateStore) -> None:
    with pytest.raises(StateError, match="unknown run nope"):
        store.handle(OpStarted("nope", "web-1", "pull", at(0)))


def test_undecodable_text_is_stored_replaced(store: StateStore) -> None:
    run_id = "20261126-003012-3f9a"
    store.handle(run_started(run_id))
    text = b"caf\xff\n".decode("utf-8", "surrogateescape")
    store.handle(
        OpFinished(run_id, "web-1", OpResult("pull", OpStatus.FAILED, error=text, tail=text))
    )

    op = store.get_run(run_id).hosts["web-1"].ops[0]

    assert (op.error, op.tail) == ("caf?\n", "caf?\n")


def test_processes_record_runs_side_by_side(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                from pathlib import Path
                from fleet.state import StateStore
                from tests.unit.test_state import feed_deploy
                with StateStore(Path({str(tmp_path)!r})) as store:
                    for i in range(10):
                        store.acquire_hosts(f"child-{{i}}", ["web-1"])
                        feed_deploy(store, f"child-{{i}}")
                """),
        ],
        cwd=REPO,
    )
    try:
        with StateStore(tmp_path) as store:
            for i in range(10):
                store.acquire_hosts(f"parent-{i}", ["db-1"])
                feed_deploy(store, f"parent-{i}")
    finally:
        assert child.wait(timeout=60) == 0

    with StateStore(tmp_path) as store:
        runs = store.list_runs(100)
        assert len(runs) == 20
        assert {run.status for run in runs} == {RunStatus.PARTIAL}
        assert store.locked_hosts() == {}


# ---------------------------------------------------------------------------------------------
# Logs


def test_logs_keep_every_byte(store: StateStore) -> None:
    run_id = "20261126-003012-3f9a"
    chunks = [b"caf\xc3", b"\xa9 \xff\xfe binary\x00\r\n", b"no newline at the end"]
    store.handle(run_started(run_id))
    store.handle(OpStarted(run_id, "db-1", "switch", at(1)))
    for chunk in chunks:
        store.handle(OpOutput(run_id, "db-1", "switch", chunk))
    store.handle(OpNote(run_id, "db-1", "switch", "rolling back to generation 41"))
    store.handle(OpFinished(run_id, "db-1", OpResult("switch", OpStatus.FAILED, 1, at(1), at(2))))
    store.handle(OpNote(run_id, "db-1", "switch", "rolled back"))  # after the op finished

    expected = b"".join(chunks) + b"fleet: rolling back to generation 41\nfleet: rolled back\n"
    assert store.read_log(run_id, "db-1", "switch") == expected
    path = store.state_dir / "logs" / run_id / "db-1" / "switch.log"
    assert store.log_path(run_id, "db-1", "switch") == path
    assert path.read_bytes() == expected
    assert store.read_log(run_id, "db-1", "switch", last=12) == b"rolled back\n"
    assert store.read_log(run_id, "db-1", "switch", last=10**6) == expected
    assert store.get_run(run_id).hosts["db-1"].ops[1].log == str(path)


def test_controller_ops_log_under_controller(store: StateStore) -> None:
    run_id = "20261126-003012-3f9a"
    store.handle(run_started(run_id))
    store.handle(OpStarted(run_id, None, "bump", at(1)))
    store.handle(OpOutput(run_id, None, "bump", b"[main 3c4d] bump fleet\n"))
    store.handle(OpFinished(run_id, None, OpResult("bump", OpStatus.SUCCESS, 0, at(1), at(2))))

    path = store.state_dir / "logs" / run_id / "controller" / "bump.log"
    assert store.log_path(run_id, None, "bump") == path
    assert store.read_log(run_id, None, "bump") == b"[main 3c4d] bump fleet\n"
    assert store.get_run(run_id).controller_ops[0].log == str(path)


def test_a_large_output_streams_to_disk_in_bounded_memory(store: StateStore) -> None:
    run_id = "20261126-003012-3f9a"
    chunk = bytes(range(256)) * 256  # 64 KiB, not UTF-8
    count = 50 * 16  # 50 MiB
    store.handle(run_started(run_id))
    store.handle(OpStarted(run_id, "web-1", "switch", at(1)))

    tracemalloc.start()
    try:
        for _ in range(count):
            store.handle(OpOutput(run_id, "web-1", "switch", chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    store.handle(OpFinished(run_id, "web-1", OpResult("switch", OpStatus.SUCCESS, 0)))

    assert peak < 1024 * 1024
    path = store.log_path(run_id, "web-1", "switch")
    assert path.stat().st_size == len(chunk) * count
    with path.open("rb") as log:
        assert all(log.read(len(chunk)) == chunk for _ in range(count))


def test_an_op_that_wrote_nothing_has_an_empty_log(store: StateStore) -> None:
    run_id = "20261126-003012-3f9a"
    store.handle(run_started(run_id))

    assert store.read_log(run_id, "web-1", "test") == b""  # not started yet
    with pytest.raises(StateError, match="run 20261126-003012-3f9a has no op deploy on web-1"):
        store.read_log(run_id, "web-1", "deploy")
    with pytest.raises(StateError, match="unknown run 20261126-000000-0000"):
        store.read_log("20261126-000000-0000", "web-1", "pull")
    with pytest.raises(StateError, match=r"invalid host '\.\./etc'"):
        store.log_path(run_id, "../etc", "pull")


def test_the_stored_tail_is_capped(store: StateStore) -> None:
    run_id = "20261126-003012-3f9a"
    store.handle(run_started(run_id))
    tail = "é" * TAIL_BYTES  # two bytes each
    store.handle(OpFinished(run_id, "web-1", OpResult("pull", OpStatus.FAILED, 1, tail=tail)))

    stored = store.get_run(run_id).hosts["web-1"].ops[0].tail

    assert stored == "é" * (TAIL_BYTES // 2)
    assert store.list_runs(1)[0].hosts["web-1"].ops[0].tail == ""  # lists leave tails out
    assert store.list_runs(1, tails=True)[0].hosts["web-1"].ops[0].tail == stored


# ---------------------------------------------------------------------------------------------
# Reading runs


def test_runs_list_newest_first(store: StateStore) -> None:
    for i, run_id in enumerate(["20261126-003012-aaaa", "20261126-003013-bbbb", "x-run"]):
        store.handle(run_started(run_id, start=i))

    assert [r.run_id for r in store.list_runs(10)] == [
        "x-run",
        "20261126-003013-bbbb",
        "20261126-003012-aaaa",
    ]
    assert [r.run_id for r in store.list_runs(2)] == ["x-run", "20261126-003013-bbbb"]
    assert store.list_runs(0) == []
    summary = store.list_runs(1)[0].summary_json()
    assert summary["hosts_total"] == 2
    latest = store.latest_run()
    assert latest is not None
    assert latest.run_id == "x-run"


def test_an_empty_store_has_no_runs(store: StateStore) -> None:
    assert store.latest_run() is None
    assert store.list_runs(5) == []
    with pytest.raises(StateError, match="unknown run 20261126-003012-3f9a"):
        store.get_run("20261126-003012-3f9a")


def test_run_ids_resolve_from_a_unique_prefix(store: StateStore) -> None:
    for run_id in ["20261126-003012-3f9a", "20261126-003012-3f9b", "20261127-101010-0000"]:
        store.handle(run_started(run_id))

    assert store.resolve_run_id("20261127") == "20261127-101010-0000"
    assert store.resolve_run_id("20261126-003012-3f9a") == "20261126-003012-3f9a"
    with pytest.raises(StateError, match="run id 20261126 is ambiguous: it matches"):
        store.resolve_run_id("20261126")
    with pytest.raises(StateError, match="unknown run 2025") as info:
        store.resolve_run_id("2025")
    assert info.value.exit_code == 2
    with pytest.raises(StateError, match="no run id given"):
        store.resolve_run_id("")


def test_new_run_ids_sort_by_time() -> None:
    run_id = new_run_id()

    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    assert run_id[:15] >= f"{datetime.now(UTC) - timedelta(minutes=1):%Y%m%d-%H%M%S}"
    assert len({new_run_id() for _ in range(20)}) > 1


# ---------------------------------------------------------------------------------------------
# Host locks


def test_a_host_belongs_to_one_run_at_a_time(tmp_path: Path) -> None:
    with StateStore(tmp_path) as first, StateStore(tmp_path) as second:
        first.handle(run_started("run-a"))
        assert first.acquire_hosts("run-a", ["web-1", "db-1"]) == {}
        second.handle(run_started("run-b", hosts=("db-1", "mail-1")))

        assert second.acquire_hosts("run-b", ["db-1", "mail-1"]) == {"db-1": "run-a"}
        assert first.acquire_hosts("run-a", ["web-1"]) == {}  # a run may ask again
        assert second.locked_hosts() == {"db-1": "run-a", "mail-1": "run-b", "web-1": "run-a"}

        first.handle(
            RunFinished(dataclasses.replace(first.get_run("run-a"), status=RunStatus.COMPLETE))
        )

        assert second.acquire_hosts("run-b", ["db-1"]) == {}
        second.handle(  # a finished run's locks go with it
            RunFinished(dataclasses.replace(second.get_run("run-b"), status=RunStatus.COMPLETE))
        )
        assert first.locked_hosts() == {}


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:  # opened before the holder exits: no recovery at open
        python(f"""
            from pathlib import Path
            from fleet.state import StateStore
            from tests.unit.test_state import run_started
            with StateStore(Path({str(tmp_path)!r})) as store:
                store.handle(run_started("run-a"))
                assert store.acquire_hosts("run-a", ["web-1"]) == {{}}
            """)

        assert store.acquire_hosts("run-b", ["web-1"]) == {}
        assert store.locked_hosts() == {"web-1": "run-b"}
        assert store.recover_aborted() == ["run-a"]


def test_the_lock_of_a_finished_run_is_taken_over(store: StateStore) -> None:
    store.handle(run_started("run-a"))
    store.acquire_hosts("run-a", ["web-1"])
    db_execute(store.state_dir, "UPDATE runs SET status = 'FAILED'")  # finished, lock left

    assert store.acquire_hosts("run-b", ["web-1"]) == {}


# ---------------------------------------------------------------------------------------------
# Recovering the runs of controllers that died


def test_a_run_whose_controller_died_is_aborted(tmp_path: Path) -> None:
    pid = dead_pid()
    with StateStore(tmp_path) as store:
        store.handle(run_started("run-a", pid=pid))
        store.acquire_hosts("run-a", ["web-1", "db-1"])
        store.handle(OpStarted("run-a", "web-1", "pull", at(1)))
        store.handle(OpFinished("run-a", "web-1", OpResult("pull", OpStatus.SUCCESS, 0, at(1))))
        store.handle(OpStarted("run-a", "web-1", "switch", at(2)))

    with StateStore(tmp_path) as reopened:  # recovery runs at every open
        run = reopened.get_run("run-a")
        assert reopened.locked_hosts() == {}
        assert reopened.recover_aborted() == []

    assert run.status is RunStatus.ABORTED
    assert run.finished_at is not None
    web, db = run.hosts["web-1"], run.hosts["db-1"]
    assert (web.status, db.status) == (HostStatus.CANCELLED, HostStatus.CANCELLED)
    assert [op.status for op in web.ops] == [
        OpStatus.SUCCESS,
        OpStatus.CANCELLED,
        OpStatus.CANCELLED,
    ]
    assert web.ops[0].error is None
    assert web.ops[1].error == f"aborted: controller process {pid} died"
    assert web.ops[1].finished_at is not None
    assert web.ops[2].finished_at is None  # it never started
    assert all(op.status is OpStatus.CANCELLED for op in db.ops)
    assert run.controller_ops[0].status is OpStatus.CANCELLED


def test_a_reused_pid_is_not_the_controller(store: StateStore) -> None:
    store.handle(run_started("run-a"))  # our own pid, alive
    assert store.recover_aborted() == []
    start = process_start_time(os.getpid())
    assert start is not None
    db_execute(store.state_dir, "UPDATE runs SET pid_start = ?", start + 1)

    assert store.recover_aborted() == ["run-a"]
    assert store.get_run("run-a").status is RunStatus.ABORTED


def test_runs_of_other_machines_are_left_alone(store: StateStore) -> None:
    store.handle(run_started("run-a", pid=dead_pid()))
    db_execute(store.state_dir, "UPDATE runs SET hostname = 'controller-2.example'")
    store.acquire_hosts("run-a", ["web-1"])
    db_execute(store.state_dir, "UPDATE host_locks SET hostname = 'controller-2.example'")

    assert store.recover_aborted() == []
    assert store.get_run("run-a").status is RunStatus.RUNNING
    assert store.acquire_hosts("run-b", ["web-1"]) == {"web-1": "run-a"}


def open_files() -> set[str]:
    fds = Path("/proc/self/fd")
    return {os.path.realpath(fd) for fd in fds.iterdir() if fd.is_symlink()}


def test_a_run_of_this_process_that_stopped_unrecorded_is_aborted_on_request(
    store: StateStore,
) -> None:
    """The dashboard's case: its run stopped on a store error, and its process lives on."""
    store.handle(run_started("run-a"))  # our own pid, alive: recovery leaves it RUNNING
    store.acquire_hosts("run-a", ["web-1", "db-1"])
    store.handle(OpStarted("run-a", "web-1", "pull", at(1)))
    store.handle(OpOutput("run-a", "web-1", "pull", b"half"))
    log = str(store.log_path("run-a", "web-1", "pull"))
    store.handle(run_started("run-b", pid=1, hosts=("mail-1",)))  # another live process's
    assert store.recover_aborted() == []
    assert log in open_files()

    assert store.abort_run("run-a", "the state store failed") is True

    run = store.get_run("run-a")
    assert (run.status, run.finished_at is not None) == (RunStatus.ABORTED, True)
    web, db = run.hosts["web-1"], run.hosts["db-1"]
    assert (web.status, db.status) == (HostStatus.CANCELLED, HostStatus.CANCELLED)
    assert [(op.status, op.error) for op in web.ops] == [
        (OpStatus.CANCELLED, "aborted: the state store failed")
    ] * 3
    assert web.ops[0].finished_at is not None and web.ops[1].finished_at is None
    assert store.locked_hosts() == {}
    assert log not in open_files()
    assert store.read_log("run-a", "web-1", "pull") == b"half"
    assert store.abort_run("run-a", "again") is False  # recorded once
    assert store.get_run("run-a").hosts["web-1"].ops[0].error == "aborted: the state store failed"
    assert store.abort_run("run-b", "not ours") is False
    assert store.get_run("run-b").status is RunStatus.RUNNING


def test_processes_are_told_apart_by_start_time() -> None:
    me = os.getpid()
    start = process_start_time(me)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        stat = Path(f"/proc/{zombie.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rpartition(")")[2].split()[0] != "Z":  # exited, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not process_alive(zombie.pid)
    finally:
        zombie.wait()

    assert process_alive(me)
    assert start is not None
    assert process_alive(me, start)
    assert not process_alive(me, start + 1)
    assert not process_alive(dead_pid())
    assert not process_alive(0)


# ---------------------------------------------------------------------------------------------
# Pruning


def backdate(store: StateStore, run_id: str, days: int) -> None:
    """Make `run_id` start (and, if it did, finish) `days` ago."""
    then = f"{datetime.now(UTC) - timedelta(days=days):%Y-%m-%dT%H:%M:%S.%fZ}"
    db_execute(
        store.state_dir,
        "UPDATE runs SET started_at = ?, finished_at = IIF(finished_at IS NULL, NULL, ?)"
        " WHERE run_id = ?",
        then,
        then,
        run_id,
    )


def test_prune_deletes_old_finished_runs_and_their_logs(store: StateStore) -> None:
    feed_deploy(store, "old-run")
    backdate(store, "old-run", 90)
    store.handle(run_started("old-running"))  # never finished (its controller is alive)
    backdate(store, "old-running", 90)
    feed_deploy(store, "recent-run")
    backdate(store, "recent-run", 10)
    assert (store.logs_dir / "old-run").is_dir()

    assert store.prune(timedelta(days=30)) == 1

    assert not (store.logs_dir / "old-run").exists()
    assert (store.logs_dir / "recent-run").is_dir()
    assert [r.run_id for r in store.list_runs(10)] == ["recent-run", "old-running"]
    with sqlite3.connect(store.db_path) as conn:
        left = conn.execute("SELECT count(*) FROM ops WHERE run_id = 'old-run'").fetchone()
    conn.close()
    assert left == (0,)
    assert store.prune(timedelta(days=30)) == 0


# ---------------------------------------------------------------------------------------------
# A state directory that cannot be used


def test_the_schema_is_versioned(store: StateStore) -> None:
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.execute("PRAGMA user_version = 2")
    conn.close()

    with pytest.raises(StateError, match="has schema version 2, this fleet knows version 1"):
        StateStore(store.state_dir)


def test_a_state_dir_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")

    with pytest.raises(StateError) as info:
        StateStore(tmp_path / "file" / "state")
    with pytest.raises(StateError, match=f"state directory {tmp_path}/file is not a directory"):
        StateStore(tmp_path / "file")

    assert (
        str(info.value) == f"cannot create state directory {tmp_path}/file/state: not a directory"
    )
    assert info.value.exit_code == 2


# Clearing the effective capabilities makes root obey file modes, as any user does.
DROP_CAPABILITIES = """
    import ctypes, os
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]
        header, data = Header(0x20080522, 0), (Data * 2)()
        assert libc.capget(ctypes.byref(header), data) == 0
        for half in data:
            half.effective = 0
        assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_read_only_state_dir_is_a_state_error(tmp_path: Path, existing: bool) -> None:
    state_dir = tmp_path / "state"
    if existing:
        with StateStore(state_dir) as store:
            feed_deploy(store, "run-a")
    else:
        state_dir.mkdir()
    state_dir.chmod(0o555)
    try:
        child = python(
            DROP_CAPABILITIES
            + f"""
    from pathlib import Path
    from fleet.errors import StateError
    from fleet.state import StateStore
    try:
        StateStore(Path({str(state_dir)!r}))
    except StateError as error:
        print(error)
    """
        )
    finally:
        state_dir.chmod(0o755)

    assert child.stdout == f"state directory {state_dir} is read-only (permission denied)\n"


def test_a_corrupt_database_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "fleet.db").write_bytes(b"\x00garbage, not SQLite" * 100)

    with pytest.raises(StateError) as info:
        StateStore(tmp_path)

    assert str(info.value) == (
        f"state database {tmp_path}/fleet.db is corrupt (file is not a database):"
        " move it away or use --state-dir"
    )


# SQLite follows the symlink and writes its journal beside /dev/full: only root may.
@pytest.mark.root
def test_a_full_disk_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "fleet.db").symlink_to("/dev/full")

    with pytest.raises(StateError, match=f"^state directory {tmp_path} is full"):
        StateStore(tmp_path)


def test_a_log_that_cannot_be_written_stops_the_run(store: StateStore) -> None:
    store.handle(run_started("run-a"))
    log = store.log_path("run-a", "web-1", "pull")
    log.parent.mkdir(parents=True)
    log.symlink_to("/dev/full")
    store.handle(OpStarted("run-a", "web-1", "pull", at(1)))

    with pytest.raises(StateError) as info:
        store.handle(OpOutput("run-a", "web-1", "pull", b"x"))

    assert str(info.value) == (
        f"state directory {store.state_dir} is full (no space left on device): cannot write {log}"
    )


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.close()
    store.close()

    with pytest.raises(StateError, match="is closed"):
        store.latest_run()


def test_op_logs_remember_what_they_wrote_and_forget_a_finished_run(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    """Recording a result (four times per op in a run) costs no file system call for a log
    this process wrote; a directory removed under a run is made again; a finished run's
    paths are forgotten, so a long-lived process does not keep them."""
    logs = OpLogs(tmp_path)
    key = ("r1", "web1", "pull")
    logs.open(key)
    logs.append(*key, b"fetched\n")
    logs.close(key)
    path = logs.path(*key)
    exists = mocker.spy(Path, "exists")
    mkdir = mocker.spy(Path, "mkdir")
    assert logs.ref("r1", "web1", OpResult("pull")) == str(path)
    assert logs.ref("r1", "web1", OpResult("test")) is None  # not begun: no output
    assert exists.call_count == 0
    done = OpResult("test", OpStatus.SUCCESS)  # ended, and not written by this process
    assert logs.ref("r1", "web1", done) is None  # (looked up)
    assert exists.call_count == 1
    assert logs.ref("r1", "web1", dataclasses.replace(done, log="logs/r0/web1/test.log")) == (
        f"{tmp_path}/logs/r0/web1/test.log"
    )
    logs.open(("r1", "web1", "switch"))  # same directory: not made again
    assert mkdir.call_count == 0
    logs.close(("r1", "web1", "switch"))

    (path.parent / "switch.log").unlink()
    path.unlink()
    path.parent.rmdir()  # e.g. removed to free space on a full disk
    logs.append("r1", "web1", "test", b"a note after the directory went\n")
    assert (path.parent / "test.log").read_bytes() == b"a note after the directory went\n"

    logs.forget_run("r1")
    pulled = OpResult("pull", OpStatus.SUCCESS)
    assert logs.ref("r1", "web1", pulled) is None  # looked up again: it is gone

    for n in range(200):  # the dashboard reading old runs' logs keeps nothing of them
        assert logs.read(f"old-{n}", "web1", "pull", None) is None
    assert logs._paths == {}


def test_the_end_of_a_run_rewrites_only_hosts_whose_result_changed(
    store: StateStore, mocker: MockerFixture
) -> None:
    """HostFinished wrote each finished host's row and ops; RunFinished writes a host again
    only when its result differs (a host that never finished, or one changed since)."""
    put_host = mocker.spy(EventRecorder, "_put_host")
    feed_deploy(store, "20261126-003012-3f9a")
    assert [c.args[3] for c in put_host.call_args_list] == [
        "web-1",  # RunStarted
        "db-1",
        "web-1",  # HostFinished
        "db-1",
    ]  # and not again at RunFinished: both were the same

    put_host.reset_mock()
    started = run_started("20261126-003013-0000")
    store.handle(started)
    web = HostResult("web-1", HostStatus.COMPLETE, ops=started.run.hosts["web-1"].ops)
    store.handle(HostFinished(started.run.run_id, web))
    changed = dataclasses.replace(web, status=HostStatus.FAILED, rolled_back=True)
    cancelled = HostResult("db-1", HostStatus.CANCELLED, ops=started.run.hosts["db-1"].ops)
    final = dataclasses.replace(
        started.run,
        status=RunStatus.FAILED,
        finished_at=at(5),
        hosts={"web-1": changed, "db-1": cancelled},
    )
    store.handle(RunFinished(final))
    assert [c.args[3] for c in put_host.call_args_list][-2:] == ["web-1", "db-1"]
    recorded = store.get_run(final.run_id)
    assert recorded.hosts["web-1"].status is HostStatus.FAILED
    assert recorded.hosts["web-1"].rolled_back
    assert recorded.hosts["db-1"].status is HostStatus.CANCELLED
