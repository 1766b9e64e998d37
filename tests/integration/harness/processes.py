"""Processes of the harness: running commands, waiting, and finding processes through /proc.

`HarnessError` is the one error of the harness: a command it ran failed, a wait timed out, or
a process survived a teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path


class HarnessError(Exception):
    """The harness could not set up or tear down the simulated fleet."""


# ---------------------------------------------------------------------------------------------
# Running and waiting


def run(argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
        timeout: float = 30) -> str:  # fmt: skip
    """Run `argv` to completion and return its stdout; HarnessError with its stderr if it fails."""
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def wait_all(procs: Iterable[tuple[subprocess.Popen[bytes], str]], timeout: float = 30) -> None:
    """Wait for processes started in parallel; raise with the first failure's stderr."""
    failures = []
    for proc, what in procs:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            failures.append(f"{what}: exit {proc.returncode}: {err.decode(errors='replace')}")
    if failures:
        raise HarnessError("; ".join(failures))


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """Poll `predicate` every 20 ms until it holds; HarnessError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# Processes, found through /proc


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def is_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def parents() -> dict[int, int]:
    """Each process's parent pid, from /proc/PID/stat (the field after the command's `)`)."""
    found = {}
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        found[pid] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def descendants(pid: int) -> set[int]:
    """The processes below `pid`: its children, theirs, and so on (not `pid` itself)."""
    children: dict[int, list[int]] = {}
    for child, parent in parents().items():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        if child not in found:
            found.add(child)
            todo.extend(children.get(child, ()))
    return found


def pids_with_env(entries: Iterable[str]) -> list[int]:
    """Processes whose initial environment holds one of `entries` ("NAME=value")."""
    wanted = {e.encode() for e in entries}
    found = []
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if wanted.intersection(environ.split(b"\0")) and is_alive(pid):
            found.append(pid)
    return found


def tcp_inodes(address: str, port: int, *, listening: bool) -> set[int]:
    """Inodes of the IPv4 TCP sockets bound to address:port (listening or not)."""
    (raw,) = struct.unpack("=I", socket.inet_aton(address))
    local = f"{raw:08X}:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == local and (fields[3] == "0A") == listening and fields[9] != "0":
                inodes.add(int(fields[9]))
    return inodes


def pids_with_sockets(inodes: set[int]) -> list[int]:
    """Processes holding one of the sockets `inodes`."""
    found = []
    for pid in _pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    found.append(pid)
                    break
    return found


def signal_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_and_wait(pids: Iterable[int], timeout: float = 5) -> list[int]:
    """SIGCONT + SIGKILL each pid, wait until gone; return the ones still alive."""
    pids = [p for p in pids if p not in (os.getpid(), 1)]
    signal_pids(pids, signal.SIGCONT)
    signal_pids(pids, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if is_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return alive
