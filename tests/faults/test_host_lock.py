"""The lock on the host itself, at the transport: one session per host at a time.

`SshSession` takes it in the first line its persistent shell runs (`protocol.host_lock_command`,
no extra round trip): `flock` on <run_dir>/fleet.lock, opened by the persistent shell itself,
so held for as long as the shell lives, and not inherited by the commands it runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fleet.config.inventory import load_inventory
from fleet.errors import HostLockedError
from fleet.transport import protocol
from fleet.transport.ssh import SshSession
from tests.integration.harness import FleetFactory


def test_a_second_session_is_refused_until_the_first_closes(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(1)
    inventory = load_inventory(fleet.config, ssh_config=None)
    host = inventory.hosts["host1"]
    me = f"fleet on {socket.gethostname()} (pid {os.getpid()})"

    async def scenario() -> None:
        first = SshSession(host, inventory.ssh)
        first.hold_for("run-a")
        await first.connect()
        second = SshSession(host, inventory.ssh)
        second.hold_for("run-b")
        started = time.monotonic()
        with pytest.raises(HostLockedError) as refused:
            await second.connect()
        assert time.monotonic() - started < 5  # refused at once, not after a wait
        assert refused.value.holder == f"run run-a of {me}"
        assert str(refused.value) == f"host1: held by run run-a of {me}"
        # a command that leaves a process behind does not take the lock with it (flock -o)
        code, _ = await first.capture("sleep 60 </dev/null >/dev/null 2>&1 &")
        assert code == 0
        await first.close()
        await second.connect()  # released when the first session closed
        assert await second.capture("echo ok") == (0, b"ok\n")
        await second.close()
        unlocked = SshSession(host, inventory.ssh, host_lock=False)  # (opt out: no lock)
        await unlocked.connect()
        await unlocked.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    holder = (fleet["host1"].run_dir / "fleet.lock").read_text().splitlines()
    assert holder[0] == f"run run-b of {me}"  # the last holder, for whoever is refused next


# ---------------------------------------------------------------------------------------------
# The lock's shell protocol, on a local sh (the same script the sessions send)

TOKEN = "f00d"


class LocalShell:
    """A persistent `sh` fed a ready line, as a session feeds it."""

    def __init__(self, lock: protocol.HostLock) -> None:
        self.proc = subprocess.Popen(
            ["sh"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(protocol.ready_command(TOKEN, lock).encode())
        self.proc.stdin.flush()
        self.ready = self._until_marker()

    def _until_marker(self) -> bytes:
        assert self.proc.stdout is not None
        out = b""
        while not re.search(rb"\x1ef00d:E:\d+\n", out):
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
        return out

    def run(self, script: str) -> bytes:
        assert self.proc.stdin is not None
        self.proc.stdin.write(protocol.wrap_command(script, TOKEN).encode())
        self.proc.stdin.flush()
        return self._until_marker()

    def close(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        code = self.proc.wait(10)
        self.proc.stdout.close()
        assert self.proc.stderr is not None and self.proc.stderr.read() == b""
        self.proc.stderr.close()
        return code


def test_the_lock_script_refuses_names_the_holder_and_takes_back_its_own(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "fleet.lock")  # run_dir is created if need be
    mine = protocol.HostLock(path, "run A of fleet on c1 (pid 1)", "owner-a")
    first = LocalShell(mine)
    assert first.ready == b"\x1ef00d:E:0\n"
    assert Path(path).read_text().splitlines() == [mine.holder, mine.owner, str(first.proc.pid)]
    out = first.run("ls -l /proc/self/fd/")
    assert b"fleet.lock" not in out  # the commands do not hold the lock's descriptor

    other = LocalShell(protocol.HostLock(path, "run B of fleet on c2 (pid 2)", "owner-b"))
    assert other.ready == b"fleet-lock-holder: run A of fleet on c1 (pid 1)\n\x1ef00d:E:75\n"
    assert protocol.holder_of(other.ready) == "run A of fleet on c1 (pid 1)"
    other.close()

    # the same owner (a session reconnecting while its old shell lives on) takes it back
    again = LocalShell(mine)
    assert again.ready == b"\x1ef00d:E:0\n"
    assert first.proc.wait(5) == -15  # the dropped shell that held it was stopped
    assert b"ok\n" in again.run("echo ok")
    first.close()
    assert again.close() == 0
    free = LocalShell(protocol.HostLock(path, "run C", "owner-c"))  # released at exit
    assert free.ready == b"\x1ef00d:E:0\n"
    free.close()


@pytest.mark.parametrize("where", ["a file as run_dir", "a directory as lock file"])
def test_without_a_writable_run_dir_the_session_runs_unlocked(tmp_path: Path, where: str) -> None:
    if where == "a file as run_dir":
        (tmp_path / "run").write_text("a file where the run_dir should be\n")
    else:
        (tmp_path / "run" / "fleet.lock").mkdir(parents=True)
    shell = LocalShell(protocol.HostLock(f"{tmp_path}/run/fleet.lock", "run A", "owner-a"))
    assert shell.ready == b"\x1ef00d:E:0\n"
    assert b"ok\n" in shell.run("echo ok")
    assert shell.close() == 0
