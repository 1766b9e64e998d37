"""The simulated fleet of `fleet demo`: a real asyncssh server process, real sh, real git."""

from __future__ import annotations

import asyncio
import functools
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from fleet.config.inventory import load_inventory
from fleet.demo.simulation import DemoFleet, DemoHost, start_demo
from fleet.errors import ConfigError
from fleet.models import Detach, HostKeyPolicy
from fleet.transport._asyncssh import asyncssh

T = TypeVar("T")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoFleet]:
    with start_demo(tmp_path_factory.mktemp("demo") / "fleet", 3) as fleet:
        yield fleet
    assert (fleet.workdir / "server.log").read_text() == ""  # no error in the server


async def connect(fleet: DemoFleet, host: DemoHost) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        host.address, host.port, username=fleet.user, client_keys=[str(fleet.identity_file)],
        known_hosts=str(fleet.known_hosts),
    )  # fmt: skip


def on_host(
    fleet: DemoFleet, name: str, body: Callable[[asyncssh.SSHClientConnection], Awaitable[T]]
) -> T:
    async def main() -> T:
        conn = await connect(fleet, fleet.host(name))
        try:
            return await body(conn)
        finally:
            conn.close()
            await conn.wait_closed()

    return asyncio.run(main())


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ---------------------------------------------------------------------------------------------
# The files


def test_files_describe_the_fleet(demo: DemoFleet) -> None:
    inventory = load_inventory(demo.config_path, ssh_config=None)
    assert list(inventory.hosts) == list(demo.hosts) == ["host-01", "host-02", "host-03"]
    assert inventory.ssh.identity_file == str(demo.identity_file)
    assert inventory.ssh.known_hosts == (str(demo.known_hosts),)
    assert inventory.ssh.host_key_policy is HostKeyPolicy.STRICT
    assert inventory.controller.repo == str(demo.admin_repo)
    for member in demo.members:
        host = inventory.hosts[member.name]
        assert (host.hostname, host.port, host.user) == (member.address, member.port, demo.user)
        assert host.repo == str(member.repo)
        assert host.system_profile == str(member.home / "state" / "current-system")
        assert host.run_dir == str(member.home / "run")
        assert host.detach is Detach.SETSID
        assert "demo" in host.tags
    known = demo.known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in known] == [f"[{m.address}]:{m.port}" for m in demo.members]
    assert all(line.split()[1] == "ssh-ed25519" for line in known)


def test_each_host_has_its_own_address_when_the_system_allows(demo: DemoFleet) -> None:
    if sys.platform.startswith("linux"):
        assert [m.address for m in demo.members] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert len({(m.address, m.port) for m in demo.members}) == 3


def test_hosts_are_one_commit_behind_and_on_generation_1(demo: DemoFleet) -> None:
    assert demo.broken == ("host-02",)
    assert demo.initial_commit != demo.release_commit
    for member in demo.members:
        head = subprocess.run(
            ["git", "-C", str(member.repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert head == demo.initial_commit
        assert member.system_profile.resolve() == member.state_dir / "generations" / "1"
        assert (member.system_profile / "commit").read_text().strip() == demo.initial_commit


# ---------------------------------------------------------------------------------------------
# Sessions


def test_a_command_runs_in_the_host_directory_with_the_stub_environment(demo: DemoFleet) -> None:
    for member in demo.members:
        result = on_host(
            demo, member.name, lambda c: c.run('echo $FLEET_STUB_HOST; pwd; echo "$HOME"')
        )
        assert result.exit_status == 0
        assert result.stdout == f"{member.name}\n{member.home}\n{member.home}\n"
        env = on_host(demo, member.name, lambda c: c.run("echo $FLEET_STUB_STATE; echo $PATH"))
        state, path = str(env.stdout).splitlines()
        assert state == str(member.state_dir)
        assert path.split(os.pathsep)[0].endswith(os.path.join("fleet", "demo", "stubs"))


def test_exit_status_stderr_and_signals_reach_the_client(demo: DemoFleet) -> None:
    result = on_host(demo, "host-01", lambda c: c.run("echo out; echo err >&2; exit 7"))
    assert (result.stdout, result.stderr, result.exit_status) == ("out\n", "err\n", 7)
    killed = on_host(demo, "host-01", lambda c: c.run("kill -TERM $$"))
    assert killed.exit_signal is not None
    assert killed.exit_signal[0] == "TERM"


def test_a_persistent_shell_runs_commands_fed_on_stdin(demo: DemoFleet) -> None:
    async def body(conn: asyncssh.SSHClientConnection) -> None:
        shell = await conn.create_process("sh", encoding=None)
        shell.stdin.write(b"echo first $FLEET_STUB_HOST\n")
        assert await shell.stdout.readline() == b"first host-03\n"
        # a side command on the same connection while the shell is open
        side = await conn.run("echo side", check=True)
        assert side.stdout == "side\n"
        shell.stdin.write(b"echo second; exit 5\n")
        assert await shell.stdout.readline() == b"second\n"
        result = await shell.wait()
        assert result.exit_status == 5

    on_host(demo, "host-03", body)


def test_input_streams_both_ways_with_eof(demo: DemoFleet) -> None:
    payload = os.urandom(4 << 20)  # beyond every window and pipe buffer

    async def body(conn: asyncssh.SSHClientConnection) -> None:
        echoed = await conn.run("cat", input=payload, encoding=None)
        assert echoed.exit_status == 0
        assert echoed.stdout == payload
        counted = await conn.run("wc -c", input=payload, encoding=None)
        assert int(counted.stdout or b"") == len(payload)
        # the command stops reading early: the rest of the input is dropped, as by sshd
        head = await conn.run("head -c 10", input=payload, encoding=None)
        assert (head.stdout, head.exit_status) == (payload[:10], 0)

    on_host(demo, "host-01", body)


def test_many_channels_share_one_connection(demo: DemoFleet) -> None:
    async def body(conn: asyncssh.SSHClientConnection) -> list[str]:
        runs = [conn.run(f"sleep 0.2; echo {i}") for i in range(20)]
        return [str(r.stdout) for r in await asyncio.gather(*runs)]

    started = time.monotonic()
    assert on_host(demo, "host-01", body) == [f"{i}\n" for i in range(20)]
    assert time.monotonic() - started < 3.0  # concurrently, not one after the other


def test_closing_the_channel_does_not_kill_the_command(demo: DemoFleet) -> None:
    marker = demo.host("host-01").home / "survived"

    async def body(conn: asyncssh.SSHClientConnection) -> None:
        process = await conn.create_process("echo started; sleep 0.5; echo $$ > survived")
        assert await process.stdout.readline() == "started\n"
        process.close()
        await process.wait_closed()

    on_host(demo, "host-01", body)
    assert wait_until(marker.exists, 5.0)


def test_only_the_client_key_is_accepted(demo: DemoFleet, tmp_path: Path) -> None:
    member = demo.host("host-01")
    other = asyncssh.generate_private_key("ssh-ed25519")

    async def intruder() -> None:
        async with asyncssh.connect(
            member.address, member.port, username=demo.user, client_keys=[other],
            known_hosts=str(demo.known_hosts), password=None, agent_path=None,
        ):  # fmt: skip
            pass

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(intruder())

    async def as_someone_else() -> str:
        async with asyncssh.connect(
            member.address, member.port, username="someone-else",
            client_keys=[str(demo.identity_file)], known_hosts=str(demo.known_hosts),
        ) as conn:  # fmt: skip
            return str((await conn.run("echo ok")).stdout)

    assert asyncio.run(as_someone_else()) == "ok\n"


# ---------------------------------------------------------------------------------------------
# The scenario: pull, then switch; the broken host fails because of what it pulled


async def pull_and_switch(
    conn: asyncssh.SSHClientConnection, member: DemoHost
) -> tuple[str, asyncssh.SSHCompletedProcess]:
    git = shlex.join(["git", "-C", str(member.repo)])
    pull = await conn.run(
        f"{git} fetch -q origin main && {git} merge -q --ff-only FETCH_HEAD && {git} rev-parse HEAD"
    )
    assert pull.exit_status == 0, pull.stderr
    flake = f"{member.repo}#{member.name}"
    switch = await conn.run(shlex.join(["nixos-rebuild", "switch", "--flake", flake]))
    return str(pull.stdout).strip(), switch


def test_pull_brings_the_release_and_the_broken_host_fails_to_switch(demo: DemoFleet) -> None:
    for member in demo.members:
        head, switch = on_host(demo, member.name, functools.partial(pull_and_switch, member=member))
        assert head == demo.release_commit
        if member.name in demo.broken:
            assert switch.exit_status == 1
            assert "assertion failed" in str(switch.stderr)
            assert member.system_profile.resolve().name == "1"
        else:
            assert switch.exit_status == 0, switch.stderr
            assert "activating the configuration" in str(switch.stdout)
            assert (member.system_profile / "commit").read_text().strip() == head


# ---------------------------------------------------------------------------------------------
# Options, teardown, scale


def test_options_single_address_stubs_and_durations(tmp_path: Path) -> None:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "nixos-rebuild").write_text("#!/bin/sh\necho placeholder $FLEET_STUB_HOST\n")
    (stubs / "nixos-rebuild").chmod(0o755)
    with start_demo(
        tmp_path / "fleet", 2, single_address=True, break_host=None,
        durations={"host-02": 1.5}, stubs_dir=stubs,
    ) as fleet:  # fmt: skip
        assert fleet.broken == ()
        assert {m.address for m in fleet.members} == {"127.0.0.1"}
        assert len({m.port for m in fleet.members}) == 2
        assert not (fleet.host("host-01").state_dir / "switch-delay").exists()
        assert (fleet.host("host-02").state_dir / "switch-delay").read_text() == "1.5\n"
        for name in fleet.hosts:
            result = on_host(fleet, name, lambda c: c.run("nixos-rebuild"))
            assert result.stdout == f"placeholder {name}\n"


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError), start_demo(tmp_path / "a", 0):
        pass
    with pytest.raises(ConfigError), start_demo(tmp_path / "b", 2, break_host="nope"):
        pass
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "something").touch()
    with pytest.raises(ConfigError), start_demo(tmp_path / "c", 2):
        pass


def test_teardown_leaves_no_process_behind(tmp_path: Path) -> None:
    with start_demo(tmp_path / "fleet", 2) as fleet:
        home = fleet.host("host-01").home
        script = (
            "sleep 300 </dev/null >/dev/null 2>&1 & echo $! > plain.pid; "
            "setsid sh -c 'echo $$ > detached.pid; exec sleep 300' </dev/null >/dev/null 2>&1 & "
            "echo started"
        )
        result = on_host(fleet, "host-01", lambda c: c.run(script))
        assert result.stdout == "started\n"
        assert wait_until(lambda: (home / "detached.pid").exists())
        pids = [int((home / f).read_text()) for f in ("plain.pid", "detached.pid")]
        assert all(alive(pid) for pid in pids)
        server = fleet.server_pid
        assert alive(server)
    assert not alive(server)
    assert wait_until(lambda: not any(alive(pid) for pid in pids), 5.0)


def test_the_server_exits_when_its_parent_dies(tmp_path: Path) -> None:
    program = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from fleet.demo.simulation import start_demo
        with start_demo(Path({str(tmp_path / "fleet")!r}), 1) as fleet:
            print(fleet.server_pid, flush=True)
            time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    server = int(parent.stdout.readline())
    assert alive(server)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    assert wait_until(lambda: not alive(server), 10.0)


@pytest.mark.many_processes  # and a startup time under that load
def test_fifty_hosts_start_quickly_and_all_answer(tmp_path: Path) -> None:
    started = time.monotonic()
    with start_demo(tmp_path / "fleet", 50) as fleet:
        startup = time.monotonic() - started

        async def ask_all() -> list[str]:
            async def ask(member: DemoHost) -> str:
                conn = await connect(fleet, member)
                try:
                    return str((await conn.run("echo $FLEET_STUB_HOST")).stdout).strip()
                finally:
                    conn.close()

            return list(await asyncio.gather(*(ask(m) for m in fleet.members)))

        asked = time.monotonic()
        assert asyncio.run(ask_all()) == list(fleet.hosts)
        answered = time.monotonic() - asked
    stopped = time.monotonic() - started - startup - answered
    print(f"50 hosts: start {startup:.2f}s, one command each {answered:.2f}s, stop {stopped:.2f}s")
    assert startup < 20.0
