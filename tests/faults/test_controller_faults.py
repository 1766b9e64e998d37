"""Faults of the controller: signals, SIGKILL, and two runs (or two controllers) at once.

Ctrl-C, SIGTERM and SIGHUP cancel cleanly (the record says CANCELLED, remote builds are stopped, an
activation that has begun is left to finish); a SIGKILLed controller leaves a RUNNING record
that the next start marks ABORTED; a host is deployed by one run at a time, whether the other
run shares the state directory (the store's host locks) or not (the lock on the host itself).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from fleet.models import Host
from fleet.ops.detach import run_directory
from tests.faults.conftest import (
    accepted_logins,
    assert_complete,
    finish,
    locked_hosts,
    log_of,
    op,
    parse_json,
    pipeline,
    recorded,
    run_json,
    statuses,
    user_ops,
    wait_log,
)
from tests.integration.harness import FleetFactory, SshdHost, TestFleet, is_alive, wait_until


def raw_runs(state_dir: Path) -> list[tuple[str, str]]:
    """(run_id, status) rows read with plain sqlite3, without the store's recovery."""
    with contextlib.closing(sqlite3.connect(state_dir / "fleet.db")) as db:
        return list(db.execute("SELECT run_id, status FROM runs ORDER BY started_at"))


def raw_locks(state_dir: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(state_dir / "fleet.db")) as db:
        return [row[0] for row in db.execute("SELECT host FROM host_locks ORDER BY host")]


def holder(run_id: str, pid: int) -> str:
    return f"held by run {run_id} of fleet on {socket.gethostname()} (pid {pid})"


def run_id_of(fleet: TestFleet, state_dir: Path | None = None) -> str:
    """The id of the (only) run in progress, from its log directory."""
    directory = state_dir or fleet.state_dir
    wait_until(lambda: any((directory / "logs").glob("*")), 30, "a run to start")
    (run_dir,) = (directory / "logs").iterdir()
    return run_dir.name


# ---------------------------------------------------------------------------------------------
# Signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_a_build_cancels_and_stops_it(
    fleet_factory: FleetFactory, sig: signal.Signals
) -> None:
    fleet = fleet_factory(2)
    generations = {name: fleet[name].stub.generation for name in fleet.names}
    for name in fleet.names:
        fleet[name].stub.block_switch()
    proc = fleet.spawn_cli(["do-all", "--json"])
    builds = {name: fleet[name].stub.wait_switch_blocked(timeout=30) for name in fleet.names}
    for name in fleet.names:
        wait_log(fleet, name, "switch", b"started detached")
    proc.send_signal(sig)
    code, data, err = finish(proc, timeout=30)

    assert code == 130, err
    assert data["status"] == "CANCELLED"
    for name in fleet.names:
        assert data["hosts"][name]["status"] == "CANCELLED"
        assert statuses(data, name) == ["SUCCESS", "CANCELLED", "CANCELLED"]
        assert op(data, name, "switch")["error"] == "cancelled"
        log = log_of(fleet, name, "switch")
        assert b"activation had not begun: the build was stopped" in log
        wait_until(partial(gone, builds[name]), 5, "the build to be stopped")
        assert fleet[name].stub.generation == generations[name]  # nothing was activated
        assert not fleet.calls(name, "systemctl")  # and nothing tested
    assert recorded(fleet.state_dir, data["run_id"]) == data
    assert locked_hosts(fleet.state_dir) == {}
    code, again, err = run_json(fleet, "op", "pull")  # the hosts are free again
    assert code == 0, (again, err)


def test_sigterm_during_activation_leaves_the_activation_to_finish(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(2)
    generations = {name: fleet[name].stub.generation for name in fleet.names}
    for name in fleet.names:
        fleet[name].stub.set_activation_delay(2)
    proc = fleet.spawn_cli(["do-all", "--json"])
    for name in fleet.names:
        wait_log(fleet, name, "switch", b"activating the configuration")
    proc.send_signal(signal.SIGTERM)
    code, data, err = finish(proc, timeout=30)

    assert code == 130, err
    assert data["status"] == "CANCELLED"
    for name in fleet.names:
        assert statuses(data, name) == ["SUCCESS", "CANCELLED", "CANCELLED"]
        log = log_of(fleet, name, "switch")
        assert b"activation had begun: left running to completion (not killed)" in log
        # the activation was not killed half-way: it runs to its end and records exit status 0
        host = fleet[name]
        rc = Path(run_directory(host_model(host), data["run_id"], "switch", 1), "rc")
        wait_until(rc.exists, 10, f"{rc} (the activation's exit status)")
        assert rc.read_text().strip() == "0"
        assert host.stub.generation == generations[name] + 1
    assert recorded(fleet.state_dir, data["run_id"]) == data
    assert locked_hosts(fleet.state_dir) == {}


# ---------------------------------------------------------------------------------------------
# SIGKILL


def test_sigkill_mid_run_is_aborted_by_the_next_start(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(2)
    fleet["host1"].stub.block_switch()
    proc = fleet.spawn_cli(["do-all", "--json"])
    fleet["host1"].stub.wait_switch_blocked(timeout=30)
    wait_log(fleet, "host1", "switch", b"started detached")
    wait_log(fleet, "host2", "switch", b"activating the configuration")
    run_id = run_id_of(fleet)
    time.sleep(0.5)  # host2's switch ends; lockstep keeps it waiting for host1
    proc.kill()
    proc.communicate()
    assert raw_runs(fleet.state_dir) == [(run_id, "RUNNING")]  # what the dead process left
    assert raw_locks(fleet.state_dir) == ["host1", "host2"]

    status = fleet.run_cli(["status", run_id, "--json"])  # the next start of fleet
    assert status.returncode == 1, status.stderr  # ABORTED's exit code
    data = parse_json(status)
    assert data["status"] == "ABORTED"
    assert data["finished_at"] is not None
    died = f"aborted: controller process {proc.pid} died"
    switch1 = op(data, "host1", "switch")
    assert (switch1["status"], switch1["error"]) == ("CANCELLED", died)
    assert statuses(data, "host1") == ["SUCCESS", "CANCELLED", "CANCELLED"]
    assert data["hosts"]["host1"]["status"] == "CANCELLED"
    assert statuses(data, "host2")[:2] == ["SUCCESS", "SUCCESS"]
    assert op(data, "host2", "test")["status"] == "CANCELLED"
    assert locked_hosts(fleet.state_dir) == {}  # its hosts are free in the store

    # the locks on the hosts went with the dead controller's connections (even host1's, whose
    # shell was following the build: the follow ends with the connection), so both hosts take
    # a new run at once, while the build that the dead run started goes on, detached
    build = fleet["host1"].stub.rebuild_pid()
    code, pulled, err = run_until_ok(fleet, "op", "pull")
    assert code == 0, (pulled, err)
    assert build is not None and is_alive(build)
    fleet["host1"].stub.release_switch()
    wait_until(lambda: fleet["host1"].stub.generation == 2, 10, "the detached build to end")


def run_until_ok(
    fleet: TestFleet, *args: str, env: dict[str, str] | None = None, within: float = 10
) -> tuple[int, dict[str, Any], str]:
    """Run fleet until it exits 0 (a lock freed by a connection that went away is freed
    asynchronously, on the host) or `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        code, data, err = run_json(fleet, *args, env=env)
        if code == 0 or time.monotonic() > deadline:
            return code, data, err
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# Two runs at once


def test_a_second_run_refuses_the_hosts_the_first_holds(fleet3: TestFleet) -> None:
    fleet3["host1"].stub.block_switch()
    first = fleet3.spawn_cli(["do-all", "--on", "host1,host2", "--json"])
    fleet3["host1"].stub.wait_switch_blocked(timeout=30)
    first_id = run_id_of(fleet3)
    logins = {name: accepted_logins(fleet3, name) for name in fleet3.names}

    code, second, err = run_json(fleet3, "op", "pull")
    assert code == 3, err
    assert second["status"] == "PARTIAL"
    for name in ("host1", "host2"):
        assert second["hosts"][name]["status"] == "FAILED"
        assert op(second, name, "pull")["error"] == f"host is held by run {first_id}"
        assert accepted_logins(fleet3, name) == logins[name]  # not even connected
    assert_complete(second, ["host3"], 1)
    assert recorded(fleet3.state_dir, second["run_id"]) == second

    fleet3["host1"].stub.release_switch()
    code, data, err = finish(first)
    assert code == 0, err  # the first run never noticed
    assert_complete(data, ["host1", "host2"], 3)
    assert recorded(fleet3.state_dir, data["run_id"]) == data
    assert locked_hosts(fleet3.state_dir) == {}


def test_two_controllers_the_lock_on_the_host_names_its_holder(
    fleet_factory: FleetFactory,
) -> None:
    """Two state directories (two controllers, or a dashboard and a laptop): the store's
    locks cannot see each other, the lock on the host does. It is held for the run and
    released when the controller's connection goes away, also after a SIGKILL."""
    fleet = fleet_factory(2)
    fleet.write_config(
        extra=user_ops(
            quick="true",
            busy="if [ {name} = host2 ]; then echo busy; exec sleep 60; fi",
        )
        + pipeline("p", "quick", "busy")
    )
    other = {"FLEET_STATE_DIR": str(fleet.root / "other-state")}
    first = fleet.spawn_cli(["run", "p", "--json"])
    wait_log(fleet, "host2", "busy", b"busy")  # host1 is done and idle, host2 is busy
    first_id = run_id_of(fleet)

    code, second, err = run_json(fleet, "op", "quick", env=other)
    assert code == 1, err
    assert second["status"] == "FAILED"
    for name in fleet.names:
        assert second["hosts"][name]["status"] == "FAILED"
        assert op(second, name, "quick")["error"] == holder(first_id, first.pid)
    assert recorded(fleet.root / "other-state", second["run_id"]) == second

    first.kill()  # SIGKILL: the controller's connections go away with it
    first.communicate()
    # host1's lock goes with its (idle) shell, within moments
    code, third, err = run_until_ok(fleet, "op", "quick", "--on", "host1", env=other)
    assert code == 0, (third, err)
    # host2's shell still runs the dead run's command: the host stays held until it ends
    code, fourth, err = run_json(fleet, "op", "quick", "--on", "host2", env=other)
    assert code == 1, err
    assert op(fourth, "host2", "quick")["error"] == holder(first_id, first.pid)
    sleeps = [pid for pid in fleet["host2"].stub_pids() if cmdline(pid) == ["sleep", "60"]]
    assert sleeps
    for pid in sleeps:
        os.kill(pid, signal.SIGKILL)
    code, fifth, err = run_until_ok(fleet, "op", "quick", "--on", "host2", env=other)
    assert code == 0, (fifth, err)
    # and the first controller's own state dir marks its run ABORTED at its next start
    assert recorded(fleet.state_dir, first_id)["status"] == "ABORTED"


def gone(pid: int) -> bool:
    return not is_alive(pid)


def host_model(host: SshdHost) -> Host:
    return Host(host.name, host.address, host.address, run_dir=str(host.run_dir))


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []
