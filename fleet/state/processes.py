"""Processes: is the controller of a run (or the holder of a host lock) still there?

A process is gone when its pid is dead, or when the pid now belongs to a process that started
at another time (field 22 of /proc/<pid>/stat tells a reused pid apart).
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat, None if no such."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the command name (field 2) may hold spaces
    try:
        return fields[0], int(fields[19])  # fields 3 and 22
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """When `pid` started (field 22 of /proc/<pid>/stat), to tell a reused pid apart."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def process_alive(pid: int, start: int | None = None) -> bool:
    """True while `pid` runs (not a zombie) and, if `start` is known, is the same process."""
    if pid <= 0:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc: ask the kernel, without the start time
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, started = stat
    return state not in ("Z", "X", "x") and (start is None or start == started)


@dataclass(frozen=True)
class Controller:
    """A fleet process on some machine: the one driving a run, or holding a host lock."""

    hostname: str
    pid: int
    start: int | None

    @classmethod
    def of(cls, pid: int) -> Controller:
        return cls(socket.gethostname(), pid, process_start_time(pid))

    def can_signal(self, hostname: str) -> bool:
        """True when it runs on `hostname` (this machine) and we may signal it."""
        if self.hostname != hostname or not process_alive(self.pid, self.start):
            return False
        try:
            os.kill(self.pid, 0)
        except OSError:  # another user's process
            return False
        return True

    def cancel_run(self, hostname: str) -> bool:
        """SIGTERM this controller, which cancels its run as on Ctrl-C, if we can."""
        if not self.can_signal(hostname):
            return False
        try:
            os.kill(self.pid, signal.SIGTERM)
        except OSError:  # gone meanwhile
            return False
        return True

    def gone(self, hostname: str) -> bool:
        """True when it ran on `hostname` (this machine) and has exited. Others we cannot see."""
        return self.hostname == hostname and not process_alive(self.pid, self.start)
