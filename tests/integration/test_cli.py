"""The real CLI against real sshd hosts, real git repos and stub nixos-rebuild/systemctl."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.integration.harness import FleetFactory, TestFleet, git, wait_until


def run_json(fleet: TestFleet, *args: str, **kw: Any) -> tuple[int, dict[str, Any], str]:
    proc = fleet.run_cli([*args, "--json"], **kw)
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not JSON ({exc}):\n{proc.stdout}\n{proc.stderr}") from exc
    return proc.returncode, data, proc.stderr


def op_statuses(data: dict[str, Any], host: str) -> list[str]:
    return [o["status"] for o in data["hosts"][host]["ops"]]


def test_do_all_one_broken_host_is_partial(fleet3: TestFleet) -> None:
    new = fleet3.break_host("host3")
    gen_before = {n: fleet3[n].stub.generation for n in fleet3.names}
    code, data, _ = run_json(fleet3, "do-all")
    assert code == 3, data
    assert data["status"] == "PARTIAL"
    for good in ("host1", "host2"):
        assert data["hosts"][good]["status"] == "COMPLETE"
        assert op_statuses(data, good) == ["SUCCESS", "SUCCESS", "SUCCESS"]
        assert fleet3.head_of(good) == new  # pulled
        assert fleet3[good].stub.generation == gen_before[good] + 1  # switched
        switch = data["hosts"][good]["ops"][1]
        assert switch["system_before"] != switch["system_after"]
        assert switch["system_after"].endswith(f"generations/{gen_before[good] + 1}")
        repo = str(fleet3[good].repo)
        assert ["nixos-rebuild", "switch", "--flake", f"{repo}#{good}"] in fleet3.calls(good)
        assert ["systemctl", "is-system-running", "--wait"] in fleet3.calls(good)  # tested
    broken = data["hosts"]["host3"]
    assert broken["status"] == "FAILED"
    assert broken["failed_op"] == "switch"
    assert op_statuses(data, "host3") == ["SUCCESS", "FAILED", "SKIPPED"]
    assert "assertion failed" in broken["ops"][1]["error"]
    assert fleet3["host3"].stub.generation == gen_before["host3"]
    assert not any(c[0] == "systemctl" for c in fleet3.calls("host3"))  # never tested
    # the store, read by a fresh process, holds exactly what the run reported
    status = fleet3.run_cli(["status", data["run_id"], "--json"])
    assert json.loads(status.stdout) == data
    log = Path(broken["ops"][1]["log"]).read_text()
    assert "error: assertion failed" in log


def test_every_host_failing_is_failed(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(2)
    fleet.write_config()
    for name in fleet.names:
        fleet[name].stub.fail_switch("no space left on device", code=1)
    code, data, _ = run_json(fleet, "do-all")
    assert code == 1
    assert data["status"] == "FAILED"
    assert all(h["failed_op"] == "switch" for h in data["hosts"].values())


def test_unreachable_host_fails_its_first_op_and_the_others_go_on(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(2)
    fleet.write_config(hosts={"ghost": {"address": "127.0.0.1", "port": 9, "detach": "setsid"}})
    code, data, _ = run_json(fleet, "do-all")
    assert code == 3
    ghost = data["hosts"]["ghost"]
    assert ghost["status"] == "FAILED"
    assert ghost["failed_op"] == "pull"
    assert "refused" in ghost["ops"][0]["error"]
    assert op_statuses(data, "ghost") == ["FAILED", "SKIPPED", "SKIPPED"]
    assert data["hosts"]["host1"]["status"] == "COMPLETE"


def test_dirty_checkout_is_refused_by_pull(fleet3: TestFleet) -> None:
    fleet3.push_change({"README": "new"})
    fleet3.make_dirty("host2")
    before = fleet3.head_of("host2")
    code, data, _ = run_json(fleet3, "do-all")
    assert code == 3
    pull = data["hosts"]["host2"]["ops"][0]
    assert pull["status"] == "FAILED"
    assert "uncommitted changes" in pull["error"]
    assert fleet3.head_of("host2") == before
    assert not fleet3.calls("host2", "nixos-rebuild")


def test_ctrl_c_during_test_kills_the_remote_group_and_records_cancelled(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(2)
    fleet.write_config()
    for name in fleet.names:
        marker = fleet[name].stub.file("test-grandchild.pid")
        fleet.add_host_test(
            name, "10-slow", f"#!/bin/sh\nsleep 1000 &\necho $! > {marker}\nwait\n", push=True
        )
    proc = fleet.spawn_cli(["do-all", "--json"])
    pids: dict[str, int] = {}

    def tests_running() -> bool:
        for name in fleet.names:
            path = fleet[name].stub.file("test-grandchild.pid")
            if path.exists() and path.read_text().strip():
                pids[name] = int(path.read_text())
        return len(pids) == len(fleet.names)

    wait_until(tests_running, timeout=30, what="the host tests to start")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 10

    def grandchildren_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in pids.values())

    wait_until(grandchildren_gone, timeout=5, what="the test grandchildren to be gone")
    data = json.loads(out)
    assert data["status"] == "CANCELLED"
    status = json.loads(fleet.run_cli(["status", data["run_id"], "--json"]).stdout)
    assert status["status"] == "CANCELLED"
    for name in fleet.names:
        assert op_statuses(status, name) == ["SUCCESS", "SUCCESS", "CANCELLED"]
        assert status["hosts"][name]["status"] == "CANCELLED"


def test_accept_new_learns_keys_and_a_changed_key_then_fails(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(2, empty_known_hosts=True)
    fleet.write_known_hosts(empty=True)
    fleet.write_config(ssh={"host_key_policy": "accept-new"})
    code, data, _ = run_json(fleet, "op", "pull")
    assert code == 0, data
    learned = fleet.known_hosts.read_text()
    for name in fleet.names:
        assert f"[{fleet[name].address}]:{fleet[name].port} " in learned
    fleet["host1"].change_host_key()
    code, data, _ = run_json(fleet, "op", "pull")
    assert code == 3
    error = data["hosts"]["host1"]["ops"][0]["error"]
    assert "mismatch" in error
    assert data["hosts"]["host2"]["status"] == "COMPLETE"
    assert fleet.known_hosts.read_text() == learned  # a changed key is never written


def test_strict_refuses_unknown_key(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(1)
    fleet.write_known_hosts(empty=True)
    fleet.write_config()
    code, data, _ = run_json(fleet, "op", "pull")
    assert code == 1
    assert "unknown host key" in data["hosts"]["host1"]["ops"][0]["error"]
    assert fleet.known_hosts.read_text() == ""


def test_detached_switch_survives_a_dropped_connection(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(2)
    fleet.write_config()
    host = fleet["host1"]
    host.stub.block_switch()
    host.stub.fail_activation("activation failed: a unit did not start", code=4)
    proc = fleet.spawn_cli(["do-all", "--json"])
    host.stub.wait_switch_blocked(timeout=30)

    def following() -> bool:  # the drop must hit the follow, not the launch's answer
        logs = list(fleet.state_dir.glob("logs/*/host1/switch.log"))
        return bool(logs) and b"started detached" in logs[0].read_bytes()

    wait_until(following, timeout=30, what="fleet to follow the switch")
    killed = host.kill_sessions()
    assert killed, "no sshd session process to kill"
    time.sleep(0.5)
    host.stub.release_switch()
    out, _ = proc.communicate(timeout=90)
    data = json.loads(out)
    switch = data["hosts"]["host1"]["ops"][1]
    assert switch["status"] == "FAILED", switch
    assert switch["exit_code"] == 4, (
        switch,
        Path(switch["log"]).read_text(),
    )  # the real exit status, read after reconnecting
    log = Path(switch["log"]).read_text()
    assert "reconnected" in log
    assert "waiting for the switch-fifo" in log  # output from before the drop ...
    assert "activating the configuration" in log  # ... and from after it
    assert "activation failed: a unit did not start" in log
    assert data["hosts"]["host2"]["status"] == "COMPLETE"
    assert proc.returncode == 3


def test_retry_runs_the_failed_hosts_from_where_they_stopped(fleet3: TestFleet) -> None:
    fleet3["host2"].stub.fail_switch("transient failure", once=True)
    code, first, _ = run_json(fleet3, "do-all")
    assert code == 3
    assert first["hosts"]["host2"]["failed_op"] == "switch"
    pulls_before = len(fleet3.calls("host2", "git"))
    code, second, _ = run_json(fleet3, "retry", first["run_id"])
    assert code == 0, second
    assert second["retry_of"] == first["run_id"]
    assert second["run_id"] != first["run_id"]
    assert list(second["hosts"]) == ["host2"]
    ops = second["hosts"]["host2"]["ops"]
    assert [o["status"] for o in ops] == ["SKIPPED", "SUCCESS", "SUCCESS"]
    assert ops[0]["error"] == f"done in run {first['run_id']}"
    assert len(fleet3.calls("host2", "git")) == pulls_before  # not pulled again
    history = json.loads(fleet3.run_cli(["history", "--json"]).stdout)
    assert [h["run_id"] for h in history] == [second["run_id"], first["run_id"]]
    assert history[0]["hosts_total"] == 1


def test_merge_deploy_merges_the_pr_and_deploys_it(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(2)
    fleet.write_config()
    pr_commit = fleet.push_pr(7, {"hosts/host1/marker": "from pr 7\n"})
    main_before = fleet.upstream_head()
    code, data, err = run_json(fleet, "merge-deploy", "--pr", "7")
    assert code == 0, (data, err)
    assert data["controller"]["ops"][0]["op"] == "merge-pr"
    assert data["controller"]["ops"][0]["status"] == "SUCCESS"
    merged = fleet.upstream_head()
    parents = git("rev-list", "--parents", "-n1", merged, cwd=fleet.upstream).split()[1:]
    assert parents == [main_before, pr_commit]  # a --no-ff merge
    for name in fleet.names:
        assert fleet.head_of(name) == merged


def test_merge_pr_refuses_without_pr(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(1)
    fleet.write_config()
    proc = fleet.run_cli(["merge-deploy"])
    assert proc.returncode == 2
    assert "--pr" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bump_flake_locks_a_local_git_input_with_nix(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(1)
    src = fleet.root / "fleet-src"
    src.mkdir()
    git("init", "-q", "-b", "main", cwd=src)
    (src / "flake.nix").write_text("{ outputs = _: { }; }\n")
    git("add", ".", cwd=src)
    git("commit", "-q", "-m", "v1", cwd=src)
    flake = f'{{\n  inputs.fleet.url = "git+file://{src}";\n  outputs = _: {{ }};\n}}\n'
    fleet.push_change({"flake.nix": flake}, "add the fleet input")
    git("pull", "-q", "--ff-only", "origin", "main", cwd=fleet.controller_repo)
    nix = ["nix", "--extra-experimental-features", "nix-command flakes"]
    subprocess.run(
        [*nix, "flake", "lock", str(fleet.controller_repo)], check=True, capture_output=True
    )
    git("add", "flake.lock", cwd=fleet.controller_repo)
    git("commit", "-q", "-m", "lock", cwd=fleet.controller_repo)
    git("push", "-q", "origin", "HEAD:main", cwd=fleet.controller_repo)
    (src / "flake.nix").write_text("{ outputs = _: { version = 2; }; }\n")
    git("commit", "-q", "-am", "v2", cwd=src)
    v2 = git("rev-parse", "HEAD", cwd=src)
    fleet.write_config()

    code, data, err = run_json(fleet, "op", "bump-flake")
    assert code == 0, (data, err)
    lock = json.loads(git("show", "main:flake.lock", cwd=fleet.upstream))
    assert lock["nodes"]["fleet"]["locked"]["rev"] == v2
    subject = git("log", "-1", "--format=%s", "main", cwd=fleet.upstream)
    assert subject == "flake.lock: update fleet"

    head = fleet.upstream_head()
    code, data, err = run_json(fleet, "op", "bump-flake")
    assert code == 0, (data, err)
    assert fleet.upstream_head() == head  # unchanged: nothing committed
    log = Path(data["controller"]["ops"][0]["log"]).read_text()
    assert "already current" in log


def test_dry_run_prints_commands_and_runs_nothing(fleet3: TestFleet) -> None:
    proc = fleet3.run_cli(["do-all", "--dry-run", "--on", "host1,host2"])
    assert proc.returncode == 0, proc.stderr
    assert "hosts (2): host1, host2" in proc.stdout
    flake = shlex.quote(f"{fleet3['host1'].repo}#host1")
    assert f"nixos-rebuild switch --flake {flake}" in proc.stdout
    assert "git -C" in proc.stdout
    assert not fleet3.calls("host1")


def test_config_error_is_one_line_exit_2(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(1)
    path = fleet.write_config(extra="[hosts.bad]\ntags = []\n")
    proc = fleet.run_cli(["do-all"], config=path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "hosts.bad" in lines[0] and "address" in lines[0]


def test_logs_status_and_prune(fleet3: TestFleet) -> None:
    fleet3.break_host("host2")
    code, data, _ = run_json(fleet3, "do-all")
    assert code == 3
    run_id = data["run_id"]
    logs = fleet3.run_cli(["logs", run_id[:15], "--host", "host2", "--op", "switch"])
    assert logs.returncode == 0, logs.stderr
    assert "error: assertion failed" in logs.stdout
    every = fleet3.run_cli(["logs", run_id])
    assert "==> host1 pull <==" in every.stdout and "==> host3 test <==" in every.stdout
    status = fleet3.run_cli(["status"])
    assert status.returncode == 3, status.stderr  # the run's own exit code: PARTIAL
    assert "PARTIAL" in status.stdout and "host2" in status.stdout
    assert fleet3.run_cli(["status", run_id, "--json"]).returncode == 3
    unknown = fleet3.run_cli(["logs", run_id, "--host", "nope"])
    assert unknown.returncode == 2 and "no host 'nope'" in unknown.stderr
    no_op = fleet3.run_cli(["logs", run_id, "--op", "nope"])
    assert no_op.returncode == 2 and "no op 'nope'" in no_op.stderr, no_op.stderr
    no_op = fleet3.run_cli(["logs", run_id, "--host", "host1", "--op", "nope"])
    assert no_op.returncode == 2 and "no op 'nope'" in no_op.stderr, no_op.stderr
    kept = fleet3.run_cli(["prune", "--older-than", "1d"])
    assert kept.stdout.strip() == "removed 0 run(s)"
    time.sleep(1.1)
    pruned = fleet3.run_cli(["prune", "--older-than", "1s"])
    assert pruned.stdout.strip() == "removed 1 run(s)"
    assert json.loads(fleet3.run_cli(["history", "--json"]).stdout) == []
    gone = fleet3.run_cli(["status", run_id])
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
