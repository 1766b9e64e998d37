"""LocalSession end to end: the persistent-shell protocol over a local `sh`."""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from fleet.errors import ConnectError, ConnectionLost
from fleet.models import Host
from fleet.transport import shell
from fleet.transport.base import CommandResult, CommandTimeout
from fleet.transport.local import LocalSession

HOST = Host(name="local", address="localhost", hostname="localhost")


@asynccontextmanager
async def session(
    env: dict[str, str] | None = None, cwd: str | None = None
) -> AsyncIterator[LocalSession]:
    s = LocalSession(HOST, env=env, cwd=cwd)
    await s.connect()
    try:
        yield s
    finally:
        await s.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def process_state(pid: int) -> str | None:
    """The state letter of a process (Z for a zombie), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


async def wait_dead(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process_state(pid) in (None, "Z"):
            return True
        await asyncio.sleep(0.02)
    return False


def proc_ids(pid: int) -> tuple[int, int]:
    """(pgid, sid) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[2]), int(fields[3])


class Lines:
    """An output sink that remembers everything and wakes waiters on each chunk."""

    def __init__(self) -> None:
        self.data = b""
        self.changed = asyncio.Event()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        self.changed.set()

    async def wait_lines(self, n: int) -> list[str]:
        while self.data.count(b"\n") < n:
            self.changed.clear()
            await self.changed.wait()
        return self.data.decode().splitlines()


@pytest.fixture(autouse=True)
def short_graces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shell, "TERM_GRACE", 0.5)
    monkeypatch.setattr(shell, "KILL_GRACE", 1.0)


# ---------------------------------------------------------------------------------------------


def test_exit_codes_and_exact_output() -> None:
    async def test() -> None:
        async with session() as s:
            assert await s.capture("true") == (0, b"")
            assert await s.capture("echo out; echo err >&2; exit 3") == (3, b"out\nerr\n")
            assert await s.capture("printf 'no newline'") == (0, b"no newline")
            assert await s.capture("printf '\\n\\n'; exit 255") == (255, b"\n\n")
            assert await s.capture("kill -s TERM $$") == (143, b"")

    run(test)


def test_non_utf8_and_marker_like_output_is_byte_exact() -> None:
    async def test() -> None:
        async with session() as s:
            code, data = await s.capture("printf '\\377\\376\\000\\036x\\036'; printf '\\036'")
            assert (code, data) == (0, b"\xff\xfe\x00\x1ex\x1e\x1e")

    run(test)


def test_the_command_leads_its_own_process_group_and_session() -> None:
    async def test() -> None:
        async with session() as s:
            out = Lines()
            task = asyncio.create_task(s.run("echo $$ $PPID; sleep 0.3 & wait", output=out))
            [line] = await out.wait_lines(1)
            pid, shell_pid = map(int, line.split())
            assert proc_ids(pid) == (pid, pid)  # group and session leader
            assert proc_ids(shell_pid)[0] != pid
            result = await task
            assert result == CommandResult(0, pid)

    run(test)


def test_connect_fails_clearly_without_setsid(tmp_path: Path) -> None:
    (tmp_path / "sh").symlink_to("/bin/sh")

    async def test() -> None:
        s = LocalSession(HOST, env={"PATH": str(tmp_path)})
        with pytest.raises(ConnectError, match=r"local: setsid .* is not installed"):
            await s.connect()
        await s.close()

    run(test)


def test_sequential_commands_share_one_shell() -> None:
    async def test() -> None:
        async with session() as s:
            parents = {(await s.capture("echo $PPID"))[1] for _ in range(20)}
            assert len(parents) == 1

    run(test)


def test_output_is_streamed_as_it_arrives() -> None:
    async def test() -> None:
        async with session() as s:
            out = Lines()
            started = time.monotonic()
            task = asyncio.create_task(s.run("echo first; sleep 1; echo second", output=out))
            await out.wait_lines(1)
            assert time.monotonic() - started < 0.8
            assert not task.done()
            assert (await task).exit_code == 0
            assert out.data == b"first\nsecond\n"

    run(test)


def test_timeout_kills_the_whole_group() -> None:
    async def test() -> None:
        async with session() as s:
            out = Lines()
            started = time.monotonic()
            with pytest.raises(CommandTimeout) as caught:
                await s.run("sh -c 'sleep 100 & echo $!; sleep 100; wait'", output=out, timeout=0.5)
            assert time.monotonic() - started < 2.0
            grandchild = int(out.data.split()[0])
            assert caught.value.pgid is not None and caught.value.timeout == 0.5
            assert await wait_dead(grandchild)
            assert await s.capture("echo still usable") == (0, b"still usable\n")

    run(test)


def test_timeout_escalates_to_kill_when_term_is_ignored() -> None:
    async def test() -> None:
        async with session() as s:
            out = Lines()
            with pytest.raises(CommandTimeout):
                await s.run(
                    "trap '' TERM; echo $$; while :; do sleep 0.05; done", output=out, timeout=0.3
                )
            assert await wait_dead(int(out.data.split()[0]))
            assert await s.capture("echo ok") == (0, b"ok\n")

    run(test)


def test_cancellation_kills_the_group_and_reraises() -> None:
    async def test() -> None:
        async with session() as s:
            out = Lines()
            task = asyncio.create_task(s.run("sleep 100 & echo $!; sleep 100", output=out))
            [grandchild] = await out.wait_lines(1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await wait_dead(int(grandchild))
            assert await s.capture("echo resynced") == (0, b"resynced\n")

    run(test)


def test_kill_works_while_run_holds_the_shell() -> None:
    async def test() -> None:
        async with session() as s:
            out = Lines()
            task = asyncio.create_task(s.run("echo $$; sleep 100", output=out))
            [pgid] = await out.wait_lines(1)
            await s.kill(int(pgid))
            result = await task
            assert result.exit_code == 143
            assert result.pgid == int(pgid)

    run(test)


def test_a_failing_sink_stops_the_command_and_propagates() -> None:
    class Broken(Exception):
        pass

    def sink(chunk: bytes) -> None:
        raise Broken

    async def test() -> None:
        async with session() as s:
            started = time.monotonic()
            with pytest.raises(Broken):
                await s.run("echo hi; sleep 100", output=sink)
            assert time.monotonic() - started < 2.0
            assert await s.capture("echo ok") == (0, b"ok\n")

    run(test)


def test_the_shell_dying_mid_command_is_a_lost_connection_and_a_new_shell_follows() -> None:
    async def test() -> None:
        async with session() as s:
            with pytest.raises(ConnectionLost, match="local: the shell exited"):
                await s.capture("kill -s KILL $PPID")
            assert await s.capture("echo again") == (0, b"again\n")

    run(test)


def test_closed_session_refuses_commands_and_close_is_idempotent() -> None:
    async def test() -> None:
        s = LocalSession(HOST)
        with pytest.raises(ConnectionLost, match="not connected"):
            await s.capture("true")
        await s.connect()
        await s.close()
        await s.close()
        with pytest.raises(ConnectionLost, match="closed"):
            await s.capture("true")
        await s.reconnect()
        assert await s.capture("echo back") == (0, b"back\n")
        await s.close()

    run(test)


def test_env_and_cwd(tmp_path: Path) -> None:
    async def test() -> None:
        async with session(env={"FLEET_TEST": "x y"}, cwd=str(tmp_path)) as s:
            assert await s.capture('echo "$FLEET_TEST"; pwd') == (0, f"x y\n{tmp_path}\n".encode())

    run(test)


def test_concurrent_runs_are_serialized() -> None:
    async def test() -> None:
        async with session() as s:
            results = await asyncio.gather(*(s.capture(f"sleep 0.05; echo {i}") for i in range(5)))
            assert results == [(0, f"{i}\n".encode()) for i in range(5)]

    run(test)


def test_50_mb_of_output_with_bounded_memory() -> None:
    size = 50 * 1024 * 1024
    line = b"0123456789abcdef\n"
    expected = hashlib.sha256((line * (size // len(line) + 1))[:size]).hexdigest()

    async def test() -> None:
        async with session() as s:
            digest = hashlib.sha256()
            biggest = 0

            def sink(chunk: bytes) -> None:
                nonlocal biggest
                digest.update(chunk)
                biggest = max(biggest, len(chunk))

            tracemalloc.start()
            try:
                result = await s.run(f"yes 0123456789abcdef | head -c {size}", output=sink)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert result.exit_code == 0
            assert digest.hexdigest() == expected
            assert peak < 4 * 1024 * 1024
            assert biggest <= 1024 * 1024

    run(test)
