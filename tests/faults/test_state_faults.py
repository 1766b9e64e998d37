"""A state directory that is read-only, full (before or during a run) or holds a corrupt database.

Each is one clear line and exit 2, never a traceback, and never a half-written record: every
event is recorded in its own transaction, so what the store holds afterwards is either the
whole event or nothing of it, and a run that could not record its end is marked ABORTED by the
next start, or, in the dashboard (a process that lives on), by the dashboard itself as soon
as the store can be written again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import (
    accepted_logins,
    assert_clean_error,
    parse_json,
    run_json,
    user_ops,
)
from tests.integration.harness import FleetFactory, HarnessError, SshdHost, TestFleet, wait_until
from tests.web.server import DashboardServer, write_token

Mount = Callable[[str], Path]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """`tmpfs("1m")` mounts a small tmpfs (a state directory that can fill up or be made
    read-only); every mount is undone after the test."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        path = tmp_path / f"mnt{len(mounts)}"
        path.mkdir()
        argv = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            message = f"cannot mount a tmpfs: {proc.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)


def no_commands(host: SshdHost) -> bool:
    return host.stub_pids() == []


def wait_commands_killed(host: SshdHost, timeout: float = 10) -> None:
    """Wait until nothing runs in `host`'s sessions; on a timeout, say what still runs."""
    try:
        wait_until(partial(no_commands, host), timeout, f"{host.name}'s commands to be killed")
    except HarnessError as exc:
        left = []
        for pid in host.stub_pids():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                left.append(f"{pid}: {argv.decode(errors='replace')[:200]}")
        raise HarnessError(f"{exc}; still running: {'; '.join(left) or 'nothing'}") from None


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its filesystem is full."""
    filler = directory / "filler"
    with filler.open("wb") as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 65536)
            file.flush()
    return filler


def history(fleet: TestFleet, state_dir: Path) -> list[dict[str, object]]:
    proc = fleet.run_cli(["history", "--json"], env={"FLEET_STATE_DIR": str(state_dir)})
    assert proc.returncode == 0, proc.stderr
    runs: list[dict[str, object]] = parse_json(proc)  # type: ignore[assignment]
    return runs


def test_read_only_state_directory(fleet_factory: FleetFactory, tmpfs: Mount) -> None:
    fleet = fleet_factory(1)
    mount = tmpfs("8m")
    env = {"FLEET_STATE_DIR": str(mount / "state")}
    code, first, err = run_json(fleet, "op", "pull", env=env)
    assert code == 0, err
    remount(mount, "ro")
    logins = accepted_logins(fleet)

    proc = fleet.run_cli(["op", "pull"], env=env)
    assert_clean_error(proc, str(mount / "state"), "read-only")
    assert accepted_logins(fleet) == logins  # nothing ran
    for args in (["status"], ["history"], ["status", first["run_id"]]):
        proc = fleet.run_cli(args, env=env)
        if proc.returncode != 0:  # reading may work (nothing to write) or not: never a trace
            assert_clean_error(proc, str(mount / "state"))
    proc = fleet.run_cli(["op", "pull"], env={"FLEET_STATE_DIR": str(mount / "new")})
    assert_clean_error(proc, f"cannot create state directory {mount / 'new'}", "read-only")

    remount(mount, "rw")
    assert [r["run_id"] for r in history(fleet, mount / "state")] == [first["run_id"]]


def test_full_state_directory_before_a_run(fleet_factory: FleetFactory, tmpfs: Mount) -> None:
    fleet = fleet_factory(1)
    mount = tmpfs("1m")
    state = mount / "state"
    env = {"FLEET_STATE_DIR": str(state)}
    code, first, err = run_json(fleet, "op", "pull", env=env)
    assert code == 0, err
    filler = fill(mount)
    logins = accepted_logins(fleet)

    proc = fleet.run_cli(["op", "pull"], env=env)
    assert_clean_error(proc, str(state), "full")
    assert accepted_logins(fleet) == logins  # refused before any host was contacted
    filler.unlink()
    assert [r["run_id"] for r in history(fleet, state)] == [first["run_id"]]  # nothing half-made


def test_state_directory_filling_up_during_a_run(fleet_factory: FleetFactory, tmpfs: Mount) -> None:
    fleet = fleet_factory(2)
    mount = tmpfs("2m")
    state = mount / "state"
    big = "echo begin; head -c 4000000 /dev/zero | tr '\\0' x; echo; exec sleep 30"
    fleet.write_config(extra=user_ops(big=big))

    proc = fleet.run_cli(["op", "big"], env={"FLEET_STATE_DIR": str(state)})
    assert_clean_error(proc, str(state), "full")
    # the run stopped: the commands it had started on the hosts were killed
    for host in fleet.hosts.values():
        wait_commands_killed(host)

    for log in state.glob("logs/*/*/*.log"):  # make room again
        log.unlink()
    runs = history(fleet, state)  # the next start marks the run that could not end ABORTED
    assert [r["status"] for r in runs] == ["ABORTED"]
    with contextlib.closing(sqlite3.connect(state / "fleet.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT host, status FROM ops ORDER BY host").fetchall()
        assert rows == [("host1", "CANCELLED"), ("host2", "CANCELLED")]
        assert db.execute("SELECT count(*) FROM host_locks").fetchone() == (0,)


def test_state_directory_filling_up_during_a_dashboard_run(
    fleet_factory: FleetFactory, tmpfs: Mount
) -> None:
    """`fleet serve` outlives the run that stopped on a full store: it records the run ABORTED
    by itself once the store can be written again (no restart, no request), the page is told,
    the hosts are free, and the next run goes."""
    fleet = fleet_factory(2)
    mount = tmpfs("2m")
    state = mount / "state"
    big = "echo begin; head -c 4000000 /dev/zero | tr '\\0' x; echo; exec sleep 30"
    fleet.write_config(extra=user_ops(big=big))
    token = write_token(fleet.root / "dashboard-token")
    server = DashboardServer(fleet, token_file=token, env={"FLEET_STATE_DIR": str(state)})
    try:
        server.start()
        run = stop_a_run_on_a_full_store_then_make_room(server, state)
        assert run["status"] == "ABORTED" and run["finished_at"] is not None
        assert server.run(run["run_id"]) == run  # the record, as the page was told
        for name in ("host1", "host2"):
            assert run["hosts"][name]["status"] == "CANCELLED"
            (big_op,) = run["hosts"][name]["ops"]
            assert big_op["status"] == "CANCELLED"
            assert big_op["error"].startswith(f"aborted: state directory {state} is full")
        assert [(r["status"], r["cancellable"]) for r in server.get("/api/runs").json()] == [
            ("ABORTED", False)
        ]
        assert all(h["current"] is None for h in server.get("/api/hosts").json())
        with contextlib.closing(sqlite3.connect(state / "fleet.db")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute("SELECT count(*) FROM host_locks").fetchone() == (0,)

        again = server.start_run("do-all")  # its hosts are free: a new Do All runs
        assert server.wait_run(again, timeout=60)["status"] == "COMPLETE"
    finally:
        stopped = server.stop()
    assert stopped == 0, server.stderr()


def stop_a_run_on_a_full_store_then_make_room(
    server: DashboardServer, state: Path
) -> dict[str, Any]:
    """Start `op:big`, which fills the store; check what the service says while it is full;
    make room; return the run of the `run_finished` message the page then gets."""
    with server.events() as events:
        run_id = server.start_run("op:big")
        wait_until(lambda: f"run {run_id} stopped: " in server.stderr(), 30, "the run to stop")
        assert f"state directory {state} is full" in server.stderr()
        for host in server.fleet.hosts.values():  # the run stopped: its commands were killed
            wait_commands_killed(host)
        # it cannot be recorded yet; it is not cancellable (the service never signals itself)
        cancel = server.post(f"/api/runs/{run_id}/cancel")
        assert cancel.status == 409, cancel.text
        assert "recorded as ABORTED as soon as the state store can be written" in cancel.text
        assert server.get("/api/runs").json()[0]["cancellable"] is False

        for log in state.glob("logs/*/*/*.log"):  # make room again; then only wait and read
            log.unlink()
        finished = events.next(
            lambda m: m["event"] == "run_finished" and m["run"]["run_id"] == run_id, timeout=30
        )
    run: dict[str, Any] = finished["run"]
    return run


def corrupt_pages(db: Path) -> None:
    """Overwrite every page but the first (the header stays valid, the tables do not)."""
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 3 * page, "expected a database of several pages"
    for offset in range(page, len(data), 97):
        data[offset] = (data[offset] * 7 + 13) % 256
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_corrupt_state_database(fleet_factory: FleetFactory, tmp_path: Path, damage: str) -> None:
    fleet = fleet_factory(1)
    state = tmp_path / "corrupt-state"
    env = {"FLEET_STATE_DIR": str(state)}
    code, first, err = run_json(fleet, "op", "pull", env=env)
    assert code == 0, err
    db = state / "fleet.db"
    assert not (state / "fleet.db-wal").exists() or (state / "fleet.db-wal").stat().st_size == 0
    if damage == "garbage":
        db.write_bytes(b"this is not an SQLite database\n" * 200)
    else:
        corrupt_pages(db)
    logins = accepted_logins(fleet)

    for args in (["op", "pull"], ["status"], ["history"], ["status", first["run_id"]]):
        proc = fleet.run_cli(args, env=env)
        assert_clean_error(proc, str(db), "corrupt")
    assert accepted_logins(fleet) == logins  # nothing ran
    assert "move it away or use --state-dir" in proc.stderr
