"""One switch per host, ever: the detached switch holds the host's switch lock itself.

A switch that fleet stopped watching (its controller SIGKILLed, or an attempt that timed out
after activation began, which is left running) goes on holding `<run_dir>/switch.lock` on the
host; the next switch on that host, from any run, waits for it (saying whose it is) and only
then starts, so that two activations never overlap and the newest config lands last.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from fleet.ops.detach import run_directory
from tests.faults.conftest import finish, log_of, op, run_json, wait_log
from tests.faults.test_controller_faults import host_model, run_id_of
from tests.integration.harness import FleetFactory, SshdHost, wait_until


def switch_starts(host: SshdHost) -> list[float]:
    """When each `nixos-rebuild switch` on the host began (stub call timestamps)."""
    return [t for t, argv in host.stub.call_records() if argv[:2] == ["nixos-rebuild", "switch"]]


def ended_at(host: SshdHost, run_id: str, attempt: int = 1) -> float:
    """When the detached switch `attempt` of `run_id` ended (its `rc` file, once written)."""
    rc = Path(run_directory(host_model(host), run_id, "switch", attempt), "rc")
    wait_until(rc.exists, 30, f"{rc} (the earlier switch's exit status)")
    return rc.stat().st_mtime


def test_a_killed_controllers_switch_keeps_the_host_until_it_ends(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(1)
    host = fleet["host1"]
    host.stub.set_activation_delay(4)
    proc = fleet.spawn_cli(["do-all", "--json"])
    wait_log(fleet, "host1", "switch", b"activating the configuration")
    first = run_id_of(fleet)
    proc.kill()  # SIGKILL: the switch goes on, orphaned, and is still activating
    proc.communicate()
    time.sleep(1)  # (the stub reads its delay just after that line: let it, then drop it)
    host.stub.set_activation_delay(None)

    code, data, err = run_json(fleet, "op", "switch")

    assert code == 0, (data, err)
    _, second_start = switch_starts(host)
    assert second_start >= ended_at(host, first) - 0.01  # never two activations at once
    switch = op(data, "host1", "switch")
    assert switch["status"] == "SUCCESS"
    log = log_of(fleet, "host1", "switch").decode()
    assert f"an earlier switch (run {first}, switch attempt 1) is still running" in log
    # the newest switch landed last, and the record says what the host runs
    assert switch["system_after"] == str(host.stub.current_system)
    assert host.stub.generation == 3


def test_a_retry_waits_for_the_attempt_whose_activation_was_left_running(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(1)
    fleet.write_config(extra="[ops.switch]\ntimeout = 8\nretries = 1\n")
    host = fleet["host1"]
    host.stub.set_activation_delay(10)  # attempt 1 times out while it activates
    proc = fleet.spawn_cli(["op", "switch", "--json"])
    wait_log(fleet, "host1", "switch", b"activating the configuration")
    time.sleep(1)  # (the stub reads its delay just after that line: let it, then drop it)
    host.stub.set_activation_delay(None)

    code, data, err = finish(proc, timeout=60)

    assert code == 0, (data, err)
    switch = op(data, "host1", "switch")
    assert (switch["status"], switch["attempts"]) == ("SUCCESS", 2), switch
    run_id = data["run_id"]
    _, second_start = switch_starts(host)
    assert second_start >= ended_at(host, run_id, 1) - 0.01  # attempt 2 began after attempt 1
    log = log_of(fleet, "host1", "switch").decode()
    assert "activation had begun: left running to completion (not killed)" in log
    assert f"an earlier switch (run {run_id}, switch attempt 1) is still running" in log
    assert switch["system_after"] == str(host.stub.current_system)


def test_a_switch_still_running_past_the_wait_refuses_the_host(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(1)
    host = fleet["host1"]
    host.stub.set_activation_delay(12)
    proc = fleet.spawn_cli(["do-all", "--json"])
    wait_log(fleet, "host1", "switch", b"activating the configuration")
    first = run_id_of(fleet)
    proc.kill()
    proc.communicate()
    fleet.write_config(extra="[ops.switch]\ntimeout = 4\n")  # waits 3 s of it at most

    code, data, err = run_json(fleet, "op", "switch")

    assert code != 0, (data, err)
    switch = op(data, "host1", "switch")
    assert switch["status"] == "FAILED", switch
    assert re.fullmatch(
        rf"an earlier switch \(run {first}, switch attempt 1\) is still running after [23]s:"
        " started no other nixos-rebuild on this host",
        switch["error"],
    ), switch["error"]
    assert len(switch_starts(host)) == 1  # the refused run started nothing
    ended_at(host, first)  # the orphan ends on its own
    assert host.stub.generation == 2
