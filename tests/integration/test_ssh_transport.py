"""SshSession against a real OpenSSH sshd (as root, on 127.0.0.2; see _sshd_min.py)."""

from __future__ import annotations

import asyncio
import getpass
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from fleet.errors import ConnectError, ConnectionLost, HostKeyError
from fleet.models import Host, HostKeyPolicy, SshSettings
from fleet.transport import shell
from fleet.transport.base import CommandTimeout
from fleet.transport.ssh import Hop, SshSession, hops_of, raise_nofile_limit
from tests.integration._sshd_min import ADDRESS, SSHD, MiniSshd, free_port, keygen

pytestmark = pytest.mark.sshd


def require_sshd() -> None:
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [tool for tool in (SSHD, "ssh-keygen") if not shutil.which(tool)]
    if missing:
        message = "the transport tests need: " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniSshd]:
    """One sshd for the tests that leave it as they found it."""
    require_sshd()
    server = MiniSshd.start(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def own_sshd(tmp_path: Path) -> Iterator[MiniSshd]:
    """An sshd for a test that stops or kills its connection processes."""
    require_sshd()
    server = MiniSshd.start(tmp_path / "own-sshd")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def host_of(server: MiniSshd, **changes: str) -> Host:
    return Host(
        name="web1",
        address=server.address,
        hostname=changes.get("hostname", server.address),
        port=server.port,
        identity_files=(changes.get("key", str(server.client_key)),),
        proxy_jump=changes.get("proxy_jump"),
    )


def settings(
    *known_hosts: Path,
    policy: HostKeyPolicy = HostKeyPolicy.STRICT,
    connect_timeout: float = 5.0,
) -> SshSettings:
    return SshSettings(
        known_hosts=tuple(str(p) for p in known_hosts),
        host_key_policy=policy,
        connect_timeout=connect_timeout,
    )


def trusting(server: MiniSshd, path: Path) -> Path:
    path.write_text(f"{server.label} {server.host_key}\n")
    return path


@asynccontextmanager
async def connected(server: MiniSshd, tmp_path: Path) -> AsyncIterator[SshSession]:
    session = SshSession(host_of(server), settings(trusting(server, tmp_path / "known_hosts")))
    await session.connect()
    try:
        yield session
    finally:
        await session.close()


def process_gone(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


class Sink:
    def __init__(self) -> None:
        self.data = b""
        self.changed = asyncio.Event()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        self.changed.set()

    async def first_line(self) -> str:
        while b"\n" not in self.data:
            self.changed.clear()
            await self.changed.wait()
        return self.data.decode().split("\n")[0]


# ---------------------------------------------------------------------------------------------
# Commands


def test_run_capture_and_exit_codes(sshd: MiniSshd, tmp_path: Path) -> None:
    async def test() -> None:
        async with connected(sshd, tmp_path) as session:
            assert await session.capture("echo out; echo err >&2; exit 3") == (3, b"out\nerr\n")
            assert await session.capture("printf 'no newline'") == (0, b"no newline")
            assert await session.capture("printf '\\377\\000\\036'") == (0, b"\xff\x00\x1e")
            assert await session.capture("kill -s KILL $$") == (137, b"")
            code, error = await session.capture("if")
            assert code == 2 and b"yntax error" in error
            result = await session.run("echo $$", output=lambda _: None)
            assert result.exit_code == 0 and result.pgid is not None

    run(test)


def test_commands_share_one_ssh_session(sshd: MiniSshd, tmp_path: Path) -> None:
    async def test() -> None:
        async with connected(sshd, tmp_path) as session:
            sessions = sshd.sessions_started()
            shells = {(await session.capture("echo $PPID $SSH_CONNECTION"))[1] for _ in range(10)}
            assert len(shells) == 1
            assert sshd.sessions_started() == sessions

    run(test)


def test_persistent_shell_round_trip_beats_a_new_session(sshd: MiniSshd, tmp_path: Path) -> None:
    async def test() -> None:
        async with connected(sshd, tmp_path) as session:
            started = time.perf_counter()
            for _ in range(10):
                await session.capture("true")
            persistent = time.perf_counter() - started
            connection = session._connections[-1][0]  # the test measures what fleet avoids
            started = time.perf_counter()
            for _ in range(10):
                await connection.run("true")
            new_sessions = time.perf_counter() - started
            assert persistent * 5 < new_sessions

    run(test)


def test_timeout_kills_the_grandchild_on_the_host(sshd: MiniSshd, tmp_path: Path) -> None:
    async def test() -> None:
        async with connected(sshd, tmp_path) as session:
            out = Sink()
            with pytest.raises(CommandTimeout) as caught:
                await session.run(
                    "sh -c 'sleep 100 & echo $!; sleep 100; wait'", output=out, timeout=0.5
                )
            assert caught.value.pgid is not None
            assert process_gone(int(out.data.split()[0]))
            assert await session.capture("echo usable") == (0, b"usable\n")

    run(test)


def test_cancellation_kills_the_group_on_the_host(sshd: MiniSshd, tmp_path: Path) -> None:
    async def test() -> None:
        async with connected(sshd, tmp_path) as session:
            out = Sink()
            task = asyncio.create_task(session.run("sleep 100 & echo $!; sleep 100", output=out))
            grandchild = int(await out.first_line())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert process_gone(grandchild)
            assert await session.capture("echo resynced") == (0, b"resynced\n")

    run(test)


def test_kill_goes_over_a_second_channel_while_the_shell_is_busy(
    sshd: MiniSshd, tmp_path: Path
) -> None:
    async def test() -> None:
        async with connected(sshd, tmp_path) as session:
            out = Sink()
            task = asyncio.create_task(session.run("echo $$; sleep 100", output=out))
            pgid = int(await out.first_line())
            await session.kill(pgid, signal="INT")
            result = await task
            assert (result.exit_code, result.pgid) == (130, pgid)

    run(test)


def test_a_dropped_connection_is_lost_until_reconnect(own_sshd: MiniSshd, tmp_path: Path) -> None:
    async def test() -> None:
        async with connected(own_sshd, tmp_path) as session:
            out = Sink()
            task = asyncio.create_task(session.run("echo $$; sleep 100", output=out))
            pgid = int(await out.first_line())
            for pid in own_sshd.connection_processes():
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(ConnectionLost) as caught:
                await task
            assert str(caught.value) == "web1: connection lost"
            with pytest.raises(ConnectionLost):
                await session.capture("true")
            await session.reconnect()
            assert await session.capture("echo back") == (0, b"back\n")
            os.killpg(pgid, signal.SIGKILL)  # the drop left it running, as ssh would

    run(test)


def test_a_hung_host_costs_seconds_not_forever(
    own_sshd: MiniSshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shell, "SIDE_TIMEOUT", 1.0)

    async def test() -> None:
        async with connected(own_sshd, tmp_path) as session:
            out = Sink()
            task = asyncio.create_task(session.run("echo $$; sleep 100", output=out, timeout=1))
            pgid = int(await out.first_line())
            stopped = own_sshd.connection_processes()
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            started = time.monotonic()
            try:
                with pytest.raises(CommandTimeout):
                    await task
                assert time.monotonic() - started < 4
                with pytest.raises(ConnectionLost, match="did not answer"):
                    await session.capture("true")
            finally:
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
                os.killpg(pgid, signal.SIGKILL)

    run(test)


def test_through_a_jump_host(sshd: MiniSshd, tmp_path: Path) -> None:
    jump = f"root@{sshd.address}:{sshd.port}"
    known_hosts = trusting(sshd, tmp_path / "known_hosts")

    async def test() -> None:
        session = SshSession(host_of(sshd, proxy_jump=jump), settings(known_hosts))
        await session.connect()
        try:
            assert len(session._connections) == 2
            assert await session.capture("echo via jump") == (0, b"via jump\n")
        finally:
            await session.close()

    run(test)


# ---------------------------------------------------------------------------------------------
# Host keys


def test_unknown_host_key_is_refused_under_strict(sshd: MiniSshd, tmp_path: Path) -> None:
    known_hosts = tmp_path / "missing" / "known_hosts"

    async def test() -> None:
        session = SshSession(host_of(sshd), settings(known_hosts))
        with pytest.raises(HostKeyError) as caught:
            await session.connect()
        assert caught.value.changed is False
        assert str(caught.value).startswith(
            f"web1: unknown host key for {sshd.label} (not in {known_hosts}); add it to "
            'known_hosts or use host_key_policy = "accept-new" (server key: ssh-ed25519 SHA256:'
        )
        await session.close()

    run(test)
    assert not known_hosts.exists()


def test_accept_new_records_the_key_then_strict_accepts_it(sshd: MiniSshd, tmp_path: Path) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"

    async def test() -> None:
        for policy in (HostKeyPolicy.ACCEPT_NEW, HostKeyPolicy.STRICT):
            session = SshSession(host_of(sshd), settings(known_hosts, policy=policy))
            await session.connect()
            assert await session.capture("echo ok") == (0, b"ok\n")
            await session.close()

    run(test)
    assert known_hosts.read_text() == f"[{ADDRESS}]:{sshd.port} {sshd.host_key}\n"
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    assert stat.S_IMODE(known_hosts.parent.stat().st_mode) == 0o700


def test_accept_new_appends_to_the_first_file_on_a_line_of_its_own(
    sshd: MiniSshd, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text(f"other.example {keygen(tmp_path / 'other')}")  # no final newline

    async def test() -> None:
        policy = HostKeyPolicy.ACCEPT_NEW
        session = SshSession(host_of(sshd), settings(first, second, policy=policy))
        await session.connect()
        await session.close()

    run(test)
    assert first.read_text().splitlines()[1] == f"{sshd.label} {sshd.host_key}"
    assert not second.exists()


def test_a_key_in_any_known_hosts_file_is_trusted(sshd: MiniSshd, tmp_path: Path) -> None:
    known_hosts = trusting(sshd, tmp_path / "second")

    async def test() -> None:
        session = SshSession(host_of(sshd), settings(tmp_path / "missing", known_hosts))
        await session.connect()
        await session.close()

    run(test)


def test_hashed_entries_are_matched(sshd: MiniSshd, tmp_path: Path) -> None:
    known_hosts = trusting(sshd, tmp_path / "known_hosts")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known_hosts)], check=True, capture_output=True)
    assert known_hosts.read_text().startswith("|1|")

    async def test() -> None:
        session = SshSession(host_of(sshd), settings(known_hosts))
        await session.connect()
        await session.close()

    run(test)


@pytest.mark.parametrize("policy", list(HostKeyPolicy))
@pytest.mark.parametrize("hashed", [False, True])
def test_a_changed_key_is_a_mismatch_under_every_policy(
    sshd: MiniSshd, tmp_path: Path, policy: HostKeyPolicy, hashed: bool
) -> None:
    other_key = keygen(tmp_path / "other")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"# a comment\n{sshd.label} {other_key}\n")
    if hashed:
        subprocess.run(
            ["ssh-keygen", "-H", "-f", str(known_hosts)], check=True, capture_output=True
        )
    before = known_hosts.read_text()

    async def test() -> None:
        session = SshSession(host_of(sshd), settings(known_hosts, policy=policy))
        with pytest.raises(HostKeyError) as caught:
            await session.connect()
        assert caught.value.changed is True
        assert str(caught.value).startswith(
            f"web1: host key mismatch for {sshd.label}: the key differs from {known_hosts}:2 — "
            "possible man-in-the-middle; "
        )
        await session.close()

    run(test)
    assert known_hosts.read_text() == before


# ---------------------------------------------------------------------------------------------
# Connection errors


def connect_error(host: Host, ssh: SshSettings) -> str:
    async def test() -> str:
        session = SshSession(host, ssh)
        try:
            await session.connect()
        except ConnectError as exc:
            assert not isinstance(exc, HostKeyError)
            return str(exc)
        finally:
            await session.close()
        raise AssertionError("connected")

    return asyncio.run(test())


def test_connection_refused(sshd: MiniSshd, tmp_path: Path) -> None:
    host = Host(name="web1", address=ADDRESS, hostname=ADDRESS, port=free_port())
    assert connect_error(host, settings(tmp_path / "kh")) == (
        f"web1: connection refused by [{ADDRESS}]:{host.port}"
    )


def test_authentication_refused(sshd: MiniSshd, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    keygen(stranger)
    known_hosts = trusting(sshd, tmp_path / "known_hosts")
    assert connect_error(host_of(sshd, key=str(stranger)), settings(known_hosts)) == (
        f"web1: authentication failed for root@{sshd.label} (tried: {stranger})"
    )


def test_name_does_not_resolve(tmp_path: Path) -> None:
    host = Host(name="web1", address="nowhere.invalid", hostname="nowhere.invalid")
    assert connect_error(host, settings(tmp_path / "kh")) == (
        "web1: name does not resolve: nowhere.invalid"
    )


def test_connect_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts TCP connections and never says a word
        silent.bind((ADDRESS, 0))
        silent.listen()
        port = silent.getsockname()[1]
        host = Host(name="web1", address=ADDRESS, hostname=ADDRESS, port=port)
        started = time.monotonic()
        error = connect_error(host, settings(tmp_path / "kh", connect_timeout=0.5))
    assert error == f"web1: connection to [{ADDRESS}]:{port} timed out after 0.5s"
    assert time.monotonic() - started < 3


def test_a_failing_jump_host_is_named(sshd: MiniSshd, tmp_path: Path) -> None:
    port = free_port()
    host = host_of(sshd, proxy_jump=f"admin@{ADDRESS}:{port}")
    assert connect_error(host, settings(tmp_path / "kh")) == (
        f"web1: jump host [{ADDRESS}]:{port}: connection refused by [{ADDRESS}]:{port}"
    )


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_hops() -> None:
    host = Host(name="h", address="h", hostname="10.0.0.5", port=2200, user="deploy")
    assert hops_of(host) == [Hop("deploy", "10.0.0.5", 2200)]
    jumped = Host(
        name="h", address="h", hostname="h.lan", proxy_jump="a@bastion:2222,ssh://b@[fd00::1]:22"
    )
    assert hops_of(jumped) == [Hop("a", "bastion", 2222), Hop("b", "fd00::1"), Hop("root", "h.lan")]
    alone = Host(name="h", address="h", hostname="h.lan", proxy_jump="bastion")
    assert hops_of(alone)[0] == Hop(getpass.getuser(), "bastion")
    assert Hop("u", "h", 22).label == "h"
    assert Hop("u", "h", 2222).label == "[h]:2222"
    with pytest.raises(ValueError):
        hops_of(Host(name="h", address="h", hostname="h.lan", proxy_jump="a@host:99999"))


def test_raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_nofile_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
