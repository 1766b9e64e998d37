"""`ShellSession`: run/capture/kill on top of a persistent shell's byte streams.

A transport supplies three things: a way to open the persistent shell (`_open_shell`, a
`ShellStream`), a way to run a one-off command beside it (`_run_side`, used to kill a process
group while the shell is busy), and connect/reconnect/close. Everything else is here:

* one `_Shell` per open shell, with a reader task that parses the shell's stdout
  (`fleet.transport.protocol.MarkerParser`) and hands each chunk of output to the running
  command's sink as it arrives (the sink is called synchronously, so a slow sink slows the
  reading down instead of buffering output);
* one command at a time per shell (an `asyncio.Lock`); output that arrives while no command
  runs (a login banner, a background process a finished command left behind) is dropped;
* timeouts, cancellation and dropped connections, with every wait bounded: a hung host costs
  a few seconds, then the session is marked lost and later commands raise `ConnectionLost`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet.errors import ConnectionLost, HostLockedError
from fleet.models import Host, Privilege
from fleet.transport import protocol
from fleet.transport.base import CommandResult, CommandTimeout, OutputSink, Session

BEGIN_WAIT = 2.0  # after a timeout/cancel, how long to wait for a pgid not yet reported
TERM_GRACE = 2.0  # how long a group gets between SIGTERM and SIGKILL
KILL_GRACE = 2.0  # how long to wait for the End marker after SIGKILL
SIDE_TIMEOUT = 5.0  # how long a kill command may take before the host counts as hung
CLOSE_TIMEOUT = 2.0  # how long closing a shell or a connection may take
PREAMBLE_SIZE = 512  # how much of a failing login's output to keep for the error message
LOCK_FILE = "fleet.lock"  # the host lock, in the host's run_dir


class StreamClosed(Exception):
    """The persistent shell's streams are gone; `reason` says why, in a few words."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ShellStream(abc.ABC):
    """The byte streams of one persistent shell (its stderr merged into stdout)."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Write to the shell's stdin; raise `StreamClosed` when it is gone."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The next chunk of the shell's stdout, b"" at EOF; raise `StreamClosed` on errors."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the shell (its stdin first); must not wait long, must not raise."""


@dataclass(eq=False)
class _Command:
    """The command a shell is running, as its reader task sees it."""

    sink: OutputSink
    pgid: int | None = None
    exit_code: int | None = None
    gone: str | None = None  # the shell died before the End marker
    sink_error: Exception | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ended(self) -> bool:
        return self.exit_code is not None or self.gone is not None

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    def update(self) -> None:
        self.changed.set()


class _Shell:
    """One open persistent shell: its streams, its marker parser and its reader task."""

    def __init__(self, stream: ShellStream, token: str) -> None:
        self.stream = stream
        self.parser = protocol.MarkerParser(token)
        self.current: _Command | None = None
        self.closed: str | None = None  # why the shell is gone, once it is
        self.ready = asyncio.Event()  # the End marker of `protocol.ready_command` was seen
        self.preamble = b""  # the end of what the login printed before that marker
        self.ready_status: int | None = None  # that marker's status: 0 when setsid exists
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        reason = "the shell exited"
        try:
            while chunk := await self.stream.read():
                for event in self.parser.feed(chunk):
                    self._dispatch(event)
            for event in self.parser.flush():
                self._dispatch(event)
        except StreamClosed as exc:
            reason = exc.reason
        except asyncio.CancelledError:
            reason = "the remote shell was closed"
            raise
        finally:
            self.closed = reason
            self.ready.set()
            if self.current is not None and not self.current.ended:
                self.current.gone = reason
                self.current.update()

    def _dispatch(self, event: protocol.Event) -> None:
        command = self.current
        if isinstance(event, protocol.End) and command is None and not self.ready.is_set():
            self.ready_status = event.exit_code
            self.ready.set()
        if command is None:  # output between commands belongs to nobody
            if isinstance(event, protocol.Output) and not self.ready.is_set():
                self.preamble = (self.preamble + event.data)[-PREAMBLE_SIZE:]
            return
        if isinstance(event, protocol.Output):
            if command.sink_error is None:
                try:
                    command.sink(event.data)
                except Exception as exc:  # the sink's own failure, raised again by run()
                    command.sink_error = exc
                    command.update()
        elif isinstance(event, protocol.Begin):
            command.pgid = event.pgid
            command.update()
        elif not command.ended:
            command.exit_code = event.exit_code
            command.update()

    def problem(self) -> str | None:
        """Why this shell cannot run commands (after its ready marker), None when it can."""
        if self.closed is not None:
            said = self.preamble.decode(errors="replace").strip().splitlines()
            return f"{self.closed}: {said[-1]}" if said else self.closed
        if self.ready_status != 0:
            return "setsid (util-linux) is not installed on the host"
        return None

    async def close(self) -> None:
        """Close the shell; an idle one is first asked to exit, so that whatever it holds on
        the host (the host lock) is released when this returns (within CLOSE_TIMEOUT)."""
        if self.current is None and self.closed is None and self.ready.is_set():
            with contextlib.suppress(StreamClosed, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.stream.write(b"exit\n")
                    await asyncio.wait([self.reader])
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        await self.stream.close()


class ShellSession(Session):
    """A `Session` that runs every command in one persistent shell.

    With `host_lock`, each persistent shell holds the host lock (`protocol.host_lock_command`:
    a file in the host's run_dir) for as long as it lives, so that two controllers (or two
    state directories) never run on one host at once; starting a shell while another session
    holds it raises `HostLockedError` naming the holder (`hold_for` names this session's run).
    """

    def __init__(self, host: Host, *, host_lock: bool = False) -> None:
        self.host = host
        self._token = protocol.new_token()
        self._host_lock = host_lock
        self._owner = secrets.token_hex(8)
        self._holder = f"fleet on {socket.gethostname()} (pid {os.getpid()})"
        self._privilege = Privilege.of(host)
        self._lock = asyncio.Lock()
        self._shell: _Shell | None = None
        self._lost: str | None = "not connected"  # why commands cannot run, when they cannot

    # -- what a transport provides

    @abc.abstractmethod
    async def _open_shell(self) -> ShellStream:
        """Start the persistent `sh` on the host; raise `StreamClosed` when that fails."""

    @abc.abstractmethod
    async def _run_side(self, script: str) -> int:
        """Run `script` beside the shell (another channel/process); raise `StreamClosed`."""

    async def _drop(self) -> None:
        """Give up on a connection that stopped answering (without waiting for it)."""

    # -- the host lock

    def hold_for(self, run_id: str) -> None:
        """Name the run this session works for in the host lock (before `connect`)."""
        self._holder = f"run {run_id} of fleet on {socket.gethostname()} (pid {os.getpid()})"

    def _lock_request(self) -> protocol.HostLock | None:
        if not self._host_lock:
            return None
        path = f"{self.host.run_dir.rstrip('/')}/{LOCK_FILE}"
        return protocol.HostLock(path, self._holder, self._owner)

    # -- the shell's life

    async def _start_shell(self) -> None:
        """Open the persistent shell and wait until it has answered once.

        Raises `StreamClosed` when the shell cannot start, `HostLockedError` when another
        session holds the host lock."""
        await self._stop_shell()
        ready = protocol.ready_command(self._token, self._lock_request())
        try:
            async with asyncio.timeout(SIDE_TIMEOUT):
                self._shell = shell = _Shell(await self._open_shell(), self._token)
                await shell.stream.write(ready.encode())
                await shell.ready.wait()
            if shell.closed is None and shell.ready_status == protocol.LOCKED:
                raise HostLockedError(self.host.name, protocol.holder_of(shell.preamble))
            problem = shell.problem()
        except TimeoutError:
            problem = f"the shell did not start within {SIDE_TIMEOUT:g}s"
        except StreamClosed as exc:
            problem = exc.reason
        except BaseException:
            await self._stop_shell()
            raise
        if problem is not None:
            await self._stop_shell()
            raise StreamClosed(problem)
        self._lost = None

    async def _stop_shell(self) -> None:
        shell, self._shell = self._shell, None
        if shell is not None:
            await shell.close()

    async def _usable_shell(self) -> _Shell:
        if self._lost is not None:
            raise ConnectionLost(self.host.name, self._lost)
        if self._shell is None or self._shell.problem() is not None:
            try:
                await self._start_shell()
            except StreamClosed as exc:
                raise ConnectionLost(self.host.name, exc.reason) from None
        assert self._shell is not None
        return self._shell

    async def _mark_lost(self, reason: str) -> None:
        self._lost = reason
        await self._drop()
        await self._stop_shell()

    # -- the Session interface

    async def run(
        self,
        script: str,
        *,
        output: OutputSink,
        timeout: float | None = None,
        privileged: bool = False,
    ) -> CommandResult:
        async with self._lock:
            shell = await self._usable_shell()
            command = _Command(output)
            shell.current = command
            try:
                async with asyncio.timeout(timeout):
                    await shell.stream.write(protocol.wrap_command(script, self._token).encode())
                    await command.wait_until(
                        lambda: command.ended or command.sink_error is not None
                    )
            except TimeoutError:
                if command.exit_code is None:  # (else it ended just as time ran out)
                    await self._abort(shell, command, privileged)
                    raise CommandTimeout(timeout or 0.0, command.pgid) from None
            except StreamClosed as exc:
                command.gone = exc.reason
            except asyncio.CancelledError:
                await self._abort(shell, command, privileged)
                raise
            if command.sink_error is not None:
                await self._abort(shell, command, privileged)
                raise command.sink_error
            if command.gone is not None:
                await self._stop_shell()
                raise ConnectionLost(self.host.name, self._lost or command.gone)
            shell.current = None
            assert command.exit_code is not None
            return CommandResult(command.exit_code, command.pgid)

    async def _abort(self, shell: _Shell, command: _Command, privileged: bool) -> None:
        """Kill a command's group and wait for its End marker, every wait bounded.

        The shell stays in use when the End marker comes; otherwise it is closed (the next
        command opens a new one), and when even the kill gets no answer the session is lost.
        """
        resynced = False
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BEGIN_WAIT):
                    await command.wait_until(lambda: command.pgid is not None or command.ended)
            pgid = command.pgid
            if pgid is not None:
                for signal, grace in (("TERM", TERM_GRACE), ("KILL", KILL_GRACE)):
                    if command.ended:
                        break
                    if not await self._kill_bounded(pgid, signal, privileged):
                        return
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(grace):
                            await command.wait_until(lambda: command.ended)
            resynced = command.exit_code is not None
        finally:
            if resynced:
                shell.current = None
            elif self._shell is shell:
                await self._stop_shell()

    async def _kill_bounded(self, pgid: int, signal: str, privileged: bool) -> bool:
        """Send a kill; False (and the session lost) when the host does not answer."""
        try:
            async with asyncio.timeout(SIDE_TIMEOUT):
                await self.kill(pgid, signal=signal, privileged=privileged)
        except TimeoutError:
            await self._mark_lost(f"the host did not answer a kill within {SIDE_TIMEOUT:g}s")
            return False
        except ConnectionLost as exc:
            await self._mark_lost(exc.reason)
            return False
        return True

    async def kill(self, pgid: int, *, signal: str = "TERM", privileged: bool = False) -> None:
        privilege = self._privilege if privileged else None
        script = protocol.kill_script(pgid, signal, privilege=privilege)
        if self._lost is not None:
            raise ConnectionLost(self.host.name, self._lost)
        try:
            await self._run_side(script)  # "no such process" is fine: the group is gone
        except StreamClosed as exc:
            raise ConnectionLost(self.host.name, exc.reason) from None
