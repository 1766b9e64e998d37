"""Faults of one host: it dies, hangs, drops its connection, changes its key, refuses us.

Each costs that host only: the run goes on, the other hosts complete, and the record in the
state store is exactly what the run reported.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.conftest import (
    accepted_logins,
    assert_complete,
    finish,
    locked_hosts,
    op,
    pipeline,
    recorded,
    run_json,
    statuses,
    user_ops,
    wait_log,
)
from tests.integration.harness import FleetFactory, TestFleet

# The transport's bounds on a host that stops answering (fleet/transport/shell.py): a kill
# that gets no answer (SIDE_TIMEOUT) and closing what is left (CLOSE_TIMEOUT, twice).
HUNG_HOST_COST = 5.0 + 2 * 2.0


def test_sshd_killed_in_the_middle_of_an_op_fails_that_host_only(fleet3: TestFleet) -> None:
    fleet3.write_config(
        extra=user_ops(work="echo started; sleep 2; echo done", mark="echo ran > {repo}/../mark")
        + pipeline("p", "work", "mark")
    )
    proc = fleet3.spawn_cli(["run", "p", "--json"])
    wait_log(fleet3, "host2", "work", b"started")
    fleet3["host2"].kill(sessions=True)  # the listener and every session: the host is gone
    code, data, err = finish(proc)

    assert code == 3, err
    assert data["status"] == "PARTIAL"
    host2 = data["hosts"]["host2"]
    assert host2["status"] == "FAILED"
    assert host2["failed_op"] == "work"
    assert statuses(data, "host2") == ["FAILED", "SKIPPED"]
    assert "connection lost" in op(data, "host2", "work")["error"]
    assert not (fleet3["host2"].repo.parent / "mark").exists()  # nothing ran after it
    assert_complete(data, ["host1", "host3"], 2)
    for name in ("host1", "host3"):
        assert (fleet3[name].repo.parent / "mark").read_text() == "ran\n"
        assert b"done" in Path(op(data, name, "work")["log"]).read_bytes()
    assert recorded(fleet3.state_dir, data["run_id"]) == data
    assert locked_hosts(fleet3.state_dir) == {}


def test_a_hung_host_times_out_and_the_others_finish(fleet3: TestFleet) -> None:
    timeout = 3.0
    fleet3.write_config(
        extra=user_ops(work=("echo started; sleep 1; echo done", timeout), after="echo after")
        + pipeline("p", "work", "after")
    )
    started = time.monotonic()
    proc = fleet3.spawn_cli(["run", "p", "--mode", "streaming", "--json"])
    wait_log(fleet3, "host2", "work", b"started")
    hung = fleet3["host2"]
    hung.pause()  # the listener and the sessions are SIGSTOPped: the host answers nothing
    assert hung.pause_sessions()
    code, data, err = finish(proc)
    took = time.monotonic() - started

    assert code == 3, err
    assert data["status"] == "PARTIAL"
    work = op(data, "host2", "work")
    assert work["status"] == "TIMEOUT"
    assert work["error"] == f"timed out after {timeout:g}s"
    assert statuses(data, "host2") == ["TIMEOUT", "SKIPPED"]
    assert data["hosts"]["host2"]["status"] == "FAILED"
    assert_complete(data, ["host1", "host3"], 2)
    # the others did not wait for the hung host (streaming), and the hung host cost a bounded
    # time: its timeout, then a kill that got no answer and the connection given up
    for name in ("host1", "host3"):
        assert op(data, name, "after")["finished_at"] < work["finished_at"]
    assert took < timeout + HUNG_HOST_COST + 10, took
    assert recorded(fleet3.state_dir, data["run_id"]) == data
    assert locked_hosts(fleet3.state_dir) == {}


@pytest.mark.parametrize("activation_rc", [0, 4])
def test_connection_drop_during_activation_is_collected_after_reconnecting(
    fleet_factory: FleetFactory, activation_rc: int
) -> None:
    fleet = fleet_factory(2)
    host = fleet["host1"]
    generation = host.stub.generation
    host.stub.set_activation_delay(2)
    if activation_rc:
        host.stub.fail_activation("activation failed: foo.service did not start", activation_rc)
    proc = fleet.spawn_cli(["do-all", "--json"])
    wait_log(fleet, "host1", "switch", b"activating the configuration")
    assert host.kill_sessions(), "no session to kill"  # the connection drops mid-activation
    code, data, err = finish(proc, timeout=90)

    switch = op(data, "host1", "switch")
    log = Path(switch["log"]).read_bytes()
    assert b"connection lost while following" in log
    assert b"reconnected" in log
    assert host.stub.generation == generation + 1  # the activation went on without us
    assert switch["system_after"] == str(host.stub.current_system)  # read after reconnecting
    assert switch["system_before"].endswith(f"generations/{generation}")
    assert switch["exit_code"] == activation_rc  # the real exit status, not a guess
    if activation_rc:
        assert code == 3, err
        assert switch["status"] == "FAILED"
        assert b"activation failed: foo.service did not start" in log  # said after the drop
        assert statuses(data, "host1") == ["SUCCESS", "FAILED", "SKIPPED"]
        assert data["status"] == "PARTIAL"
    else:
        assert code == 0, err
        assert statuses(data, "host1") == ["SUCCESS"] * 3
        assert data["status"] == "COMPLETE"
    assert_complete(data, ["host2"], 3)
    assert recorded(fleet.state_dir, data["run_id"]) == data


def test_changed_host_key_under_strict_fails_that_host_and_runs_nothing(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(2)
    known_hosts = fleet.known_hosts.read_text()
    fleet.push_change({"README": "a change to pull\n"})
    head = fleet.head_of("host1")
    fleet["host1"].change_host_key()
    logins = accepted_logins(fleet, "host1")
    code, data, err = run_json(fleet, "do-all")

    assert code == 3, err
    host1 = data["hosts"]["host1"]
    assert host1["status"] == "FAILED"
    assert host1["failed_op"] == "pull"
    assert statuses(data, "host1") == ["FAILED", "SKIPPED", "SKIPPED"]
    label = fleet["host1"].known_hosts_name
    error = op(data, "host1", "pull")["error"]
    assert error.startswith(f"host key mismatch for {label}: the key differs from "), error
    assert "ssh-keygen -R" in error
    # nothing ran there: no login, no pull, no build
    assert accepted_logins(fleet, "host1") == logins
    assert fleet.head_of("host1") == head
    assert fleet.calls("host1") == []
    assert fleet.known_hosts.read_text() == known_hosts  # and the new key was not learned
    assert_complete(data, ["host2"], 3)
    assert recorded(fleet.state_dir, data["run_id"]) == data


def test_refused_authentication_an_unresolvable_name_and_a_closed_port(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(2)
    fleet.write_config(
        hosts={
            "host2": {"user": "nosuchuser"},
            "ghost": {"address": "no-such-host.invalid", "port": 22},
            "closed": {"address": "127.0.0.1", "port": 9},
        }
    )
    code, data, err = run_json(fleet, "op", "pull")

    assert code == 3, err
    errors = {name: op(data, name, "pull")["error"] for name in ("host2", "ghost", "closed")}
    label = fleet["host2"].known_hosts_name
    assert errors["host2"].startswith(f"authentication failed for nosuchuser@{label} (tried: ")
    assert errors["ghost"] == "name does not resolve: no-such-host.invalid"
    assert errors["closed"] == "connection refused by [127.0.0.1]:9"
    for name in errors:
        assert data["hosts"][name]["status"] == "FAILED"
        assert statuses(data, name) == ["FAILED"]
    assert_complete(data, ["host1"], 1)
    assert recorded(fleet.state_dir, data["run_id"]) == data
