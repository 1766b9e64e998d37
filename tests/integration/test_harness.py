"""Tests of the harness itself: the sshd hosts, their environment, the stubs and the repos."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from tests.integration.harness import (
    STUBS_DIR,
    FleetFactory,
    SshdHost,
    StubState,
    TestFleet,
    descendants,
    git,
    is_alive,
    kill_and_wait,
    parents,
    wait_until,
)

pytestmark = pytest.mark.sshd

FLEET_PULL = (
    "cd {repo} && git status --porcelain --untracked-files=no && git symbolic-ref --short HEAD"
    " && git fetch origin main && git merge --ff-only FETCH_HEAD"
)


def banner(host: SshdHost, timeout: float = 2) -> bytes:
    """The first bytes sshd sends on a new connection."""
    with socket.create_connection((host.address, host.port), timeout=timeout) as sock:
        return sock.recv(64)


def refused(host: SshdHost) -> bool:
    try:
        socket.create_connection((host.address, host.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def run_stub(state: StubState, *argv: str, host: str = "host1") -> subprocess.CompletedProcess[str]:
    """Run a stub locally with a host's environment (faster than through ssh)."""
    env = {
        "PATH": f"{STUBS_DIR}:/usr/bin:/bin",
        "FLEET_STUB_STATE": str(state.path),
        "FLEET_STUB_HOST": host,
    }
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=30)


# ---------------------------------------------------------------------------------------------
# Sessions see the stubs


def test_sessions_see_the_stubs_first_and_their_own_state(fleet3: TestFleet) -> None:
    for name, host in fleet3.hosts.items():
        proc = fleet3.ssh(
            name,
            'echo "$PATH"; echo "$FLEET_STUB_STATE"; echo "$FLEET_STUB_HOST"; '
            "sh -c 'for c in nixos-rebuild systemctl sudo; do command -v $c; done; echo \"$PATH\"'",
            check=True,
        )
        path, state, host_name, rebuild, systemctl, sudo, inner_path = proc.stdout.splitlines()
        assert path.split(":")[0] == str(STUBS_DIR)
        assert inner_path == path
        assert state == str(host.stub.path)
        assert host_name == name
        assert rebuild == str(STUBS_DIR / "nixos-rebuild")
        assert systemctl == str(STUBS_DIR / "systemctl")
        assert sudo == str(fleet3.root / "bin" / "sudo")
    assert len({h.address for h in fleet3.hosts.values()}) == 3


def test_switch_through_ssh_makes_a_generation_and_records_the_call(fleet3: TestFleet) -> None:
    host = fleet3["host2"]
    before = host.stub.current_system
    flake = f"{host.repo}#host2"
    proc = fleet3.ssh("host2", f"nixos-rebuild switch --flake {flake}")
    assert proc.returncode == 0, proc.stderr
    assert "activating the configuration..." in proc.stdout
    assert host.stub.current_system != before
    assert host.stub.generation == 2
    assert host.stub.commit_of() == fleet3.head_of("host2")
    assert fleet3.calls("host2") == [["nixos-rebuild", "switch", "--flake", flake]]
    assert fleet3.calls("host1") == []

    proc = fleet3.ssh("host2", "sudo -n nixos-rebuild switch --rollback")
    assert proc.returncode == 0, proc.stderr
    assert host.stub.current_system == before
    assert fleet3.calls("host2")[1:] == [
        ["sudo", "-n", "nixos-rebuild", "switch", "--rollback"],
        ["nixos-rebuild", "switch", "--rollback"],
    ]


def test_a_broken_config_fails_to_evaluate(fleet3: TestFleet) -> None:
    commit = fleet3.break_host("host1")
    assert fleet3.pull("host1") == commit
    before = fleet3["host1"].stub.current_system
    proc = fleet3.ssh("host1", f"nixos-rebuild switch --flake {fleet3['host1'].repo}#host1 2>&1")
    assert proc.returncode == 1
    assert "error:" in proc.stdout
    assert "assertion failed" in proc.stdout
    assert "activating the configuration" not in proc.stdout
    assert fleet3["host1"].stub.current_system == before
    # the other hosts' configurations are untouched
    assert fleet3.pull("host2") == commit
    host2 = fleet3["host2"]
    assert run_stub(host2.stub, "nixos-rebuild", "switch", "--flake", f"{host2.repo}#host2",
                    host="host2").returncode == 0  # fmt: skip


def test_git_pull_in_a_host_repo(fleet3: TestFleet) -> None:
    old = fleet3.head_of("host3")
    new = fleet3.push_change({"hosts/host3/extra.nix": "{ }\n"}, "add extra.nix")
    assert fleet3.upstream_head() == new != old
    proc = fleet3.ssh("host3", FLEET_PULL.format(repo=fleet3["host3"].repo))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "main"
    assert fleet3.head_of("host3") == new
    assert fleet3.head_of("host1") == old

    fleet3.make_dirty("host3")
    proc = fleet3.ssh("host3", f"git -C {fleet3['host3'].repo} status --porcelain -uno")
    assert proc.stdout.strip() == "M hosts/host3/configuration.nix"


def test_host_tests_and_pull_requests(fleet3: TestFleet) -> None:
    fleet3.add_host_test("host1", "local", "#!/bin/sh\nexit 0\n", push=False)
    commit = fleet3.add_host_test("host1", "pushed", "#!/bin/sh\necho ok\n")
    assert commit == fleet3.upstream_head()
    fleet3.pull("host1")
    tests = fleet3["host1"].repo / "hosts" / "host1" / "tests"
    assert sorted(p.name for p in tests.iterdir()) == ["local", "pushed"]
    assert all(os.access(p, os.X_OK) for p in tests.iterdir())
    assert fleet3.ssh("host1", f"{tests}/pushed").stdout == "ok\n"

    pr = fleet3.push_pr(7, {"README": "hello\n"}, "a pull request")
    assert fleet3.upstream_head() == commit
    assert git("rev-parse", "refs/pull/7/head", cwd=fleet3.upstream) == pr


# ---------------------------------------------------------------------------------------------
# Controlling the sshd servers


def test_pause_stop_kill_and_restart(fleet3: TestFleet) -> None:
    host1, host2, host3 = fleet3.hosts.values()

    host1.pause()
    with socket.create_connection((host1.address, host1.port), timeout=2) as sock:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(64)  # accepted by the kernel, but no banner
        host1.resume()
        sock.settimeout(5)
        assert sock.recv(64).startswith(b"SSH-2.0-")

    session = subprocess.Popen(
        [*fleet3.ssh_argv("host2"), "read line; echo $line"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: bool(host2.stub_pids()), what="host2's command")
    listener = host2.pid
    host2.stop()
    assert host2.pid is None
    assert listener is not None and not is_alive(listener)
    assert refused(host2)
    out, _ = session.communicate("survived\n", timeout=10)
    assert out == "survived\n"  # sessions outlive the listener
    host2.restart()
    assert banner(host2).startswith(b"SSH-2.0-")

    listener = host3.pid
    host3.kill()
    assert listener is not None and not is_alive(listener)
    assert refused(host3)
    host3.start()
    assert fleet3.ssh("host3", "true").returncode == 0


def test_kill_sessions_drops_connections_but_not_commands(fleet3: TestFleet) -> None:
    host = fleet3["host1"]
    go, finished = host.stub.file("go"), host.stub.file("finished")
    client = subprocess.Popen(
        [*fleet3.ssh_argv("host1"), f"until [ -e {go} ]; do sleep 0.05; done; touch {finished}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until(lambda: bool(host.session_pids()), what="host1's session")
    wait_until(lambda: bool(host.stub_pids()), what="host1's command")
    killed = host.kill_sessions()
    assert killed
    assert not any(is_alive(p) for p in killed)
    assert client.wait(timeout=5) == 255  # the client saw the connection drop
    assert host.session_pids() == []
    go.touch()
    wait_until(finished.exists, what="the command to finish")  # it kept running
    assert host.pid is not None  # the listener is untouched
    assert fleet3.ssh("host1", "true").returncode == 0


def test_paused_sessions_hang_until_resumed(fleet3: TestFleet) -> None:
    host = fleet3["host2"]
    client = subprocess.Popen(
        [*fleet3.ssh_argv("host2"), "read line; echo got $line"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: bool(host.stub_pids()), what="host2's command")
    assert host.pause_sessions()
    assert client.stdin is not None
    client.stdin.write("x\n")
    client.stdin.flush()
    with pytest.raises(subprocess.TimeoutExpired):
        client.wait(timeout=0.3)
    host.resume_sessions()
    assert client.communicate(timeout=5)[0] == "got x\n"


def test_changed_host_key_is_refused_until_known_hosts_is_rewritten(fleet3: TestFleet) -> None:
    host = fleet3["host1"]
    old = host.host_key_line()
    host.change_host_key()
    assert host.host_key_line() != old
    proc = fleet3.ssh("host1", "true")
    assert proc.returncode == 255
    assert "IDENTIFICATION HAS CHANGED" in proc.stderr
    fleet3.write_known_hosts()
    assert fleet3.ssh("host1", "true").returncode == 0


def test_empty_known_hosts_and_single_address(fleet_factory: FleetFactory) -> None:
    small = fleet_factory(2, names=["a", "b"], single_address=True, empty_known_hosts=True)
    assert {h.address for h in small.hosts.values()} == {"127.0.0.1"}
    assert small["a"].port != small["b"].port
    assert small.known_hosts.read_text() == ""
    assert small.ssh("a", "true").returncode == 255  # strict checking, unknown key
    small.write_known_hosts()
    assert [line.split()[0] for line in small.known_hosts.read_text().splitlines()] == [
        f"[127.0.0.1]:{small['a'].port}",
        f"[127.0.0.1]:{small['b'].port}",
    ]
    assert small.ssh("b", "echo $FLEET_STUB_HOST").stdout == "b\n"


def test_teardown_leaves_no_process(fleet_factory: FleetFactory) -> None:
    test_fleet = fleet_factory(2)
    host1, host2 = test_fleet.hosts.values()
    # a hung, detached build with a grandchild, a paused listener, a stopped session
    host1.stub.spawn_grandchild()
    flake = f"{host1.repo}#host1"
    test_fleet.ssh(
        "host1", f"setsid nixos-rebuild switch --flake {flake} </dev/null >/dev/null 2>&1 &"
    )
    wait_until(lambda: host1.stub.grandchild_pid() is not None, what="the grandchild")
    grandchild = host1.stub.grandchild_pid()
    assert grandchild is not None and is_alive(grandchild)
    client = subprocess.Popen(
        [*test_fleet.ssh_argv("host2"), "sleep 60"], stdout=subprocess.DEVNULL
    )
    wait_until(lambda: bool(host2.session_pids()), what="host2's session")
    host2.pause_sessions()
    host2.pause()
    pids = [p for pids in test_fleet.leftover_processes().values() for p in pids]
    assert grandchild in pids
    assert {host1.pid, host2.pid} <= set(pids)
    assert set(host2.session_pids()) <= set(pids)

    fleet_factory.close()

    assert not any(is_alive(p) for p in pids)
    assert test_fleet.leftover_processes() == {"host1": [], "host2": []}
    configs = [str(h.config_path).encode() for h in (host1, host2)]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert not any(c in cmdline for c in configs), f"sshd {pid} survived: {cmdline!r}"
    client.wait(timeout=5)


# ---------------------------------------------------------------------------------------------
# Stub behaviour the core's tests rely on


def test_switch_knobs(fleet3: TestFleet) -> None:
    host = fleet3["host1"]
    stub = host.stub
    flake = f"{host.repo}#host1"
    switch = ("nixos-rebuild", "switch", "--flake", flake)

    stub.fail_switch("no space left on device", code=100)
    proc = run_stub(stub, *switch)
    assert (proc.returncode, proc.stdout.splitlines()[-1]) == (100, "no space left on device")
    stub.remove("fail-switch")
    stub.fail_switch(once=True)
    assert run_stub(stub, *switch).returncode == 1
    assert run_stub(stub, *switch).returncode == 0
    assert stub.generation == 2

    stub.fail_activation()
    proc = run_stub(stub, *switch)
    assert proc.returncode == 4
    assert "activating the configuration..." in proc.stdout
    assert stub.generation == 3  # activation had begun
    stub.remove("fail-activation")

    proc = run_stub(stub, "nixos-rebuild", "switch", "--flake", flake, "--refresh",
                    "--option", "narinfo-cache-negative-ttl", "0")  # fmt: skip
    assert proc.returncode == 0 and stub.generation == 4
    assert stub.calls()[-1][4:] == ["--refresh", "--option", "narinfo-cache-negative-ttl", "0"]

    stub.fail_rollback("rollback refused")
    assert run_stub(stub, "nixos-rebuild", "switch", "--rollback").returncode == 1
    stub.remove("fail-rollback")
    assert run_stub(stub, "nixos-rebuild", "switch", "--rollback").returncode == 0
    assert stub.generation == 3
    assert stub.generations() == [1, 2, 3, 4]


def test_switch_blocks_on_the_fifo_until_released(fleet3: TestFleet) -> None:
    host = fleet3["host2"]
    host.stub.block_switch()
    host.stub.set_activation_delay(0.2)
    proc = subprocess.Popen(
        [*fleet3.ssh_argv("host2"), f"nixos-rebuild switch --flake {host.repo}#host2"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    pid = host.stub.wait_switch_blocked()
    assert pid == host.stub.rebuild_pid()
    assert host.stub.generation == 1
    started = time.monotonic()
    host.stub.release_switch()
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert time.monotonic() - started >= 0.2
    assert "waiting for the switch-fifo" in out
    assert out.index("waiting") < out.index("activating the configuration...")
    assert host.stub.generation == 2


def test_killing_the_group_kills_the_grandchild(fleet3: TestFleet) -> None:
    host = fleet3["host3"]
    host.stub.spawn_grandchild()
    env = {"PATH": f"{STUBS_DIR}:/usr/bin:/bin", "FLEET_STUB_STATE": str(host.stub.path)}
    proc = subprocess.Popen(
        ["nixos-rebuild", "switch", "--flake", f"{host.repo}#host3"],
        env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    wait_until(lambda: host.stub.grandchild_pid() is not None, what="the grandchild")
    grandchild = host.stub.grandchild_pid()
    assert grandchild is not None and is_alive(grandchild)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=5)
    assert proc.returncode == -signal.SIGTERM
    assert "activating" not in out
    wait_until(lambda: not is_alive(grandchild), timeout=5, what="the grandchild to die")
    assert host.stub.generation == 1


def test_systemctl_stub(fleet3: TestFleet) -> None:
    stub = fleet3["host1"].stub
    proc = fleet3.ssh(
        "host1",
        "systemctl is-system-running --wait; echo rc=$?; "
        "systemctl show -p LoadState --value -- fleet.service; "
        "systemctl show -p LoadState --value -- nginx.service; "
        "systemctl restart -- fleet.service; echo rc=$?",
    )
    assert proc.stdout.splitlines() == ["running", "rc=0", "loaded", "not-found", "rc=0"]

    stub.set_units(["fleet.service", "web"])
    stub.fail_restart(["web.service"])
    stub.set_degraded(["web.service"])
    systemctl = ("systemctl",)
    degraded = run_stub(stub, *systemctl, "is-system-running", "--wait")
    assert (degraded.returncode, degraded.stdout) == (1, "degraded\n")
    failed = run_stub(stub, *systemctl, "--failed", "--no-pager").stdout
    assert "web.service" in failed and "1 loaded units listed." in failed
    assert run_stub(stub, *systemctl, "restart", "--", "web.service").returncode == 1
    assert run_stub(stub, *systemctl, "is-active", "web").stdout == "failed\n"
    assert run_stub(stub, *systemctl, "restart", "nope.service").returncode == 5
    assert run_stub(stub, *systemctl, "frobnicate").returncode == 0
    stub.set_degraded(None)
    assert run_stub(stub, *systemctl, "--failed").stdout.endswith("0 loaded units listed.\n")
    assert stub.calls("systemctl")[3] == ["systemctl", "restart", "--", "fleet.service"]


def test_write_config(fleet3: TestFleet) -> None:
    config = tomllib.loads(fleet3.config.read_text())
    assert config["ssh"]["known_hosts"] == [str(fleet3.known_hosts)]
    assert config["controller"]["repo"] == str(fleet3.controller_repo)
    host = fleet3["host3"]
    assert config["hosts"]["host3"] == {
        "address": host.address,
        "port": host.port,
        "repo": str(host.repo),
        "system_profile": str(host.system_profile),
        "run_dir": str(host.run_dir),
        "detach": "setsid",
    }
    path = fleet3.write_config(
        fleet3.root / "other.toml",
        ssh={"host_key_policy": "accept-new", "connect_timeout": None},
        defaults={"tags": ["a", "b"]},
        hosts={"host1": {"sudo": True}, "ghost": {"address": "127.0.0.99", "port": 1}},
        host_names=["host1"],
        extra='[ops.hello]\ncommand = "echo hello"\n',
    )
    config = tomllib.loads(path.read_text())
    assert config["ssh"]["host_key_policy"] == "accept-new"
    assert "connect_timeout" not in config["ssh"]
    assert config["defaults"] == {"user": "root", "branch": "main", "tags": ["a", "b"]}
    assert list(config["hosts"]) == ["host1", "ghost"]
    assert config["hosts"]["host1"]["sudo"] is True
    assert config["ops"]["hello"]["command"] == "echo hello"


def test_descendants_finds_the_whole_tree_below_a_process() -> None:
    """The /proc walk the fault tests and the benchmark share: children of children too."""
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sh -c 'sleep 30 & wait' & wait"])
    try:
        wait_until(lambda: len(descendants(proc.pid)) == 3, what="sh's three descendants")
        below = descendants(proc.pid)
        assert proc.pid not in below
        family = parents()
        assert sum(family[pid] == proc.pid for pid in below) == 2  # a sleep and the inner sh
        names = sorted(Path(f"/proc/{pid}/comm").read_text().strip() for pid in below)
        assert names == ["sh", "sleep", "sleep"]
    finally:
        kill_and_wait([proc.pid, *descendants(proc.pid)])
        proc.wait()
