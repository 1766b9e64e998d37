"""`LocalSession`: the persistent-shell protocol over a local `sh` subprocess.

Used by the unit tests and by simulated fleets: the same wrapping, markers, process groups,
timeouts and cancellation as over SSH, without a network. The host's name only labels errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections import deque
from collections.abc import Mapping

from fleet.errors import ConnectError
from fleet.models import Host
from fleet.transport.shell import CLOSE_TIMEOUT, ShellSession, ShellStream, StreamClosed

READ_LIMIT = 256 * 1024  # stop reading the pipe when this much output waits to be parsed


class _ShellProtocol(asyncio.SubprocessProtocol):
    """Collects the shell's stdout, with flow control, and notices its exit."""

    def __init__(self) -> None:
        self.transport: asyncio.SubprocessTransport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.data_ready = asyncio.Event()
        self.exited = asyncio.Event()
        self.finished = asyncio.Event()  # the process exited and every pipe is closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        self.data_ready.set()
        if self.buffered > READ_LIMIT:
            self._stdout().pause_reading()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.eof = True
            self.data_ready.set()

    def process_exited(self) -> None:
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.data_ready.set()
        self.finished.set()

    def take(self) -> bytes:
        data = self.chunks.popleft()
        self.buffered -= len(data)
        if self.buffered <= READ_LIMIT // 2 and not self.eof:
            self._stdout().resume_reading()
        return data

    def _stdout(self) -> asyncio.ReadTransport:
        assert self.transport is not None
        pipe = self.transport.get_pipe_transport(1)
        assert isinstance(pipe, asyncio.ReadTransport)
        return pipe


class _ProcessStream(ShellStream):
    def __init__(self, transport: asyncio.SubprocessTransport, protocol: _ShellProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def write(self, data: bytes) -> None:
        stdin = self._transport.get_pipe_transport(0)
        if self._protocol.eof or stdin is None or stdin.is_closing():
            raise StreamClosed("the local shell exited")
        assert isinstance(stdin, asyncio.WriteTransport)
        stdin.write(data)

    async def read(self) -> bytes:
        protocol = self._protocol
        while not protocol.chunks:
            if protocol.eof:
                return b""
            protocol.data_ready.clear()
            await protocol.data_ready.wait()
        return protocol.take()

    async def close(self) -> None:
        stdin = self._transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()  # an idle shell exits at EOF
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._protocol.exited.wait()
        self._transport.close()  # kills the shell if it is still busy, closes the pipes
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._protocol.finished.wait()


class LocalSession(ShellSession):
    """A session whose "host" is a local `sh` (optionally with extra env vars and a cwd)."""

    def __init__(
        self, host: Host, *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> None:
        super().__init__(host)
        self._env = {**os.environ, **env} if env is not None else None
        self._cwd = cwd

    async def _open_shell(self) -> ShellStream:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                _ShellProtocol,
                "sh",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,  # the terminal's Ctrl-C is fleet's to handle, not sh's
            )
        except OSError as exc:
            raise StreamClosed(f"cannot start sh: {exc.strerror or exc}") from None
        return _ProcessStream(transport, protocol)

    async def _run_side(self, script: str) -> int:
        try:
            process = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                script,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=self._env,
                cwd=self._cwd,
            )
        except OSError as exc:
            raise StreamClosed(f"cannot start sh: {exc.strerror or exc}") from None
        try:
            return await process.wait()
        finally:
            if process.returncode is None:  # cancelled: do not leave it behind
                process.kill()
                await process.wait()

    async def connect(self) -> None:
        try:
            await self._start_shell()
        except StreamClosed as exc:
            raise ConnectError(self.host.name, exc.reason) from None

    async def reconnect(self) -> None:
        await self.close()
        await self.connect()

    async def close(self) -> None:
        self._lost = "the session is closed"
        await self._stop_shell()
