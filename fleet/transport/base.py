"""The interface between the executor and a host.

A `Session` is one host's connection for a whole run. It keeps ONE persistent remote shell
(`sh`) open and feeds it each command in turn, so that an op costs a round trip, not a new SSH
session (each session costs ~140 ms of host-side work and a PAM/logind session). Every command
still runs in its own process group (`setsid -w`), whose id the session learns from an in-band
marker and which it kills with a second command on the same connection when the command times
out or is cancelled. `fleet.transport.protocol` renders the wrapping and parses the markers; the
SSH (`ssh.py`) and local (`local.py`) transports only move bytes.

The executor never imports asyncssh: it receives a `SessionFactory`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from fleet.models import Host

OutputSink = Callable[[bytes], None]


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    pgid: int | None = None


class CommandTimeout(Exception):
    """A command ran past its timeout; its process group was killed (when reachable)."""

    def __init__(self, timeout: float, pgid: int | None) -> None:
        self.timeout = timeout
        self.pgid = pgid
        super().__init__(f"timed out after {timeout:g}s")


class Session(abc.ABC):
    """A connection to one host, shared by every op of a run on that host."""

    host: Host

    def hold_for(self, run_id: str) -> None:  # noqa: B027 (optional hook: no-op by default)
        """Say which run this session serves, for a transport that locks its host."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection and the persistent shell.

        Raises `ConnectError` (refused, timed out, auth, name not resolved) or `HostKeyError`
        (unknown key under strict, changed key) with the reason in one line.
        """

    @abc.abstractmethod
    async def run(
        self,
        script: str,
        *,
        output: OutputSink,
        timeout: float | None = None,
        privileged: bool = False,
    ) -> CommandResult:
        """Run a shell fragment on the host in its own process group.

        `script` is already rendered and quoted (see `fleet.transport.protocol`); stdin is
        /dev/null and stderr is merged into stdout, which is streamed to `output` as it arrives,
        byte-exact.
        On timeout the group is killed and `CommandTimeout` raised; on task cancellation the
        group is killed (a second command on the same connection) and `CancelledError`
        re-raised; a dropped connection raises `ConnectionLost`. `privileged` says the group
        may hold root processes, so killing it needs the host's privilege strategy.
        """

    async def capture(self, script: str, *, timeout: float | None = None) -> tuple[int, bytes]:
        """Run a short command and return its exit code and whole output."""
        chunks: list[bytes] = []
        result = await self.run(script, output=chunks.append, timeout=timeout)
        return result.exit_code, b"".join(chunks)

    @abc.abstractmethod
    async def kill(self, pgid: int, *, signal: str = "TERM", privileged: bool = False) -> None:
        """Kill a process group on the host with a separate command (never a channel close)."""

    @abc.abstractmethod
    async def reconnect(self) -> None:
        """Drop whatever is left of the connection and open a new one (after a drop)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the shell and the connection; idempotent and safe after a drop."""


SessionFactory = Callable[[Host], Session]
