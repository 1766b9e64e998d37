"""The SSH server behind `fleet demo`: many simulated hosts in one process, no sshd needed.

    python -m fleet.demo.server SPEC.json

SPEC (a `ServerSpec`, written by `fleet.demo.simulation`) names the host key, the one authorized
client key and, for each host, where it listens and its home directory. The server opens one
asyncssh listener per host (port 0 picks a free port), then writes one line of JSON to stdout,
`{"ports": {"<host>": <port>, ...}}`, and serves until its stdin reaches EOF (the parent
closed it or died), or until SIGTERM, SIGINT or SIGHUP.

Each session runs a real `sh -c COMMAND` (or `sh` for a shell request) as OpenSSH's sshd
would: in a new session, with cwd and HOME the host's directory and PATH starting with the
stubs directory, its stdin, stdout and stderr piped byte-exact to the channel, both ways, with
flow control. The channel gets EOF and the exit status (or signal) once the child has exited
and its output has reached EOF. When the client closes the channel or drops the connection the
child is not killed: its stdin gets EOF and its output pipes are closed (it gets SIGPIPE on its
next write), as with sshd. Signal, break and pty requests are refused or ignored.

On the way out the server kills what it started: the process group of every child still
running and, on Linux, every process whose environment carries this server's token
(`FLEET_DEMO_SERVER`), which catches the detached grandchildren that left those groups.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import getpass
import json
import os
import signal
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.transport._asyncssh import asyncssh
from fleet.transport.ssh import raise_nofile_limit

TOKEN_VAR = "FLEET_DEMO_SERVER"
_PASSED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
_GRACE = 2.0  # seconds between SIGTERM and SIGKILL at shutdown


@dataclass(frozen=True)
class HostSpec:
    """One simulated host: its name, where it listens, its directories and extra variables."""

    name: str
    address: str
    home: str  # cwd and HOME of every command
    state_dir: str  # FLEET_STUB_STATE
    port: int = 0  # 0: any free port
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ServerSpec:
    host_key: str  # path of the server's private host key (shared by every host)
    client_key: str  # path of the public key every host accepts, for any user name
    stubs_dir: str  # first on PATH
    token: str  # marks the environment of every process the server starts
    hosts: tuple[HostSpec, ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def parse(cls, text: str) -> ServerSpec:
        data = json.loads(text)
        hosts = tuple(
            HostSpec(**{**h, "env": tuple((str(k), str(v)) for k, v in h["env"])})
            for h in data.pop("hosts")
        )
        return cls(**data, hosts=hosts)


def child_environment(spec: ServerSpec, host: HostSpec, user: str) -> dict[str, str]:
    """The environment of a host's commands: a login-like minimum, the stubs first on PATH."""
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env.update(
        PATH=os.pathsep.join([spec.stubs_dir, os.environ.get("PATH") or os.defpath]),
        HOME=host.home,
        USER=user,
        LOGNAME=user,
        SHELL="/bin/sh",
        FLEET_STUB_STATE=host.state_dir,
        FLEET_STUB_HOST=host.name,
    )
    env.update(host.env)
    env[TOKEN_VAR] = spec.token
    return env


# ---------------------------------------------------------------------------------------------
# One session: an SSH channel joined to a local `sh`


class _Child(asyncio.SubprocessProtocol):
    """The subprocess side of an `_ExecSession`: forwards every event to it."""

    def __init__(self, session: _ExecSession) -> None:
        self._session = session

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self._session.child_output(fd, data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._session.child_pipe_closed(fd)

    def process_exited(self) -> None:
        self._session.child_exited()

    def pause_writing(self) -> None:  # the child's stdin pipe is full
        self._session.pause_input(True)

    def resume_writing(self) -> None:
        self._session.pause_input(False)


class _ExecSession(asyncssh.SSHServerSession[bytes]):
    def __init__(self, host: _SimulatedHost) -> None:
        self._host = host
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._command: str | None = None
        self._transport: asyncio.SubprocessTransport | None = None
        self._pending: list[bytes] = []  # input that arrived before the child started
        self._input_eof = False
        self._input_paused = False
        self._channel_open = True
        self._open_outputs = {1, 2}
        self._exited = False
        self._finished = False
        self._start_task: asyncio.Task[None] | None = None

    # -- the SSH side

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def session_started(self) -> None:
        self._start_task = asyncio.get_running_loop().create_task(self._start())

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._transport is None:
            self._pending.append(data)
        else:
            self._feed(data)

    def eof_received(self) -> bool:
        self._input_eof = True
        if self._transport is not None:
            self._stdin().write_eof()
        return True  # stay half-open: the child's output still flows

    def pause_writing(self) -> None:  # the channel's window is full
        self._pause_output(True)

    def resume_writing(self) -> None:
        self._pause_output(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._channel_open = False
        self._detach()

    # -- the child side

    async def _start(self) -> None:
        assert self._chan is not None
        argv = ["sh"] if self._command is None else ["sh", "-c", self._command]
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: _Child(self),
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self._host.spec.home,
                env=self._host.environment(self._chan),
                start_new_session=True,  # as sshd does
            )
        except OSError as exc:
            if self._channel_open:
                self._chan.write_stderr(f"fleet demo: cannot start sh: {exc}\n".encode())
                self._chan.exit(127)
            return
        self._transport = transport
        self._host.children.add(transport)
        for data in self._pending:
            self._feed(data)
        self._pending.clear()
        if self._input_eof:
            self._stdin().write_eof()
        if not self._channel_open:
            self._detach()

    def _feed(self, data: bytes) -> None:
        stdin = self._stdin()
        if not stdin.is_closing():  # else the child closed its stdin: drop it, as sshd does
            stdin.write(data)

    def _stdin(self) -> asyncio.WriteTransport:
        assert self._transport is not None
        pipe = self._transport.get_pipe_transport(0)
        assert isinstance(pipe, asyncio.WriteTransport)
        return pipe

    def _outputs(self) -> list[asyncio.ReadTransport]:
        assert self._transport is not None
        pipes = (self._transport.get_pipe_transport(fd) for fd in (1, 2))
        return [p for p in pipes if isinstance(p, asyncio.ReadTransport)]

    def child_output(self, fd: int, data: bytes) -> None:
        if self._chan is None or not self._channel_open:
            return
        if fd == 2:
            self._chan.write_stderr(data)
        else:
            self._chan.write(data)

    def child_pipe_closed(self, fd: int) -> None:
        self._open_outputs.discard(fd)
        self._maybe_finish()

    def child_exited(self) -> None:
        self._exited = True
        self._maybe_finish()

    def pause_input(self, paused: bool) -> None:
        self._input_paused = paused
        if paused:
            if self._chan is not None and self._channel_open:
                self._chan.pause_reading()
        else:
            # Not from inside the pipe's resume_writing: resume_reading delivers the buffered
            # data and EOF at once, and a write_eof there makes asyncio drop the pipe's buffer.
            asyncio.get_running_loop().call_soon(self._resume_input)

    def _resume_input(self) -> None:
        if not self._input_paused and self._chan is not None and self._channel_open:
            self._chan.resume_reading()

    def _pause_output(self, paused: bool) -> None:
        if self._transport is None:
            return
        for pipe in self._outputs():
            if paused:
                pipe.pause_reading()
            else:
                pipe.resume_reading()

    def _detach(self) -> None:
        """The channel is gone: EOF to the child's stdin, close its output pipes, keep it."""
        if self._transport is None or self._finished:
            return
        self._stdin().close()
        for pipe in self._outputs():
            pipe.close()

    def _maybe_finish(self) -> None:
        """Once the child has exited and its output reached EOF: report, then release it."""
        if self._finished or not self._exited or self._open_outputs:
            return
        self._finished = True
        assert self._transport is not None
        code = self._transport.get_returncode()
        self._transport.close()  # the child has exited: this only closes the stdin pipe
        self._host.children.discard(self._transport)
        if self._chan is not None and self._channel_open:
            self._chan.write_eof()
            _report_exit(self._chan, code if code is not None else 255)


def _report_exit(chan: asyncssh.SSHServerChannel[bytes], code: int) -> None:
    if code >= 0:
        chan.exit(code)
        return
    try:
        name = signal.Signals(-code).name.removeprefix("SIG")
    except ValueError:
        chan.exit(128 - code)
    else:
        chan.exit_with_signal(name)


# ---------------------------------------------------------------------------------------------
# Hosts and the server


class _SimulatedHost:
    """One host's listener settings, shared by its connections."""

    def __init__(self, server: DemoServer, spec: HostSpec) -> None:
        self.spec = spec
        self.children = server.children
        self.connections = server.connections
        self._base_env = child_environment(server.spec, spec, server.user)

    def environment(self, chan: asyncssh.SSHServerChannel[bytes]) -> dict[str, str]:
        env = dict(self._base_env)
        sent = chan.get_environment()  # like sshd's `AcceptEnv LANG LC_*`
        env.update((k, v) for k, v in sent.items() if k == "LANG" or k.startswith("LC_"))
        peer = chan.get_extra_info("peername") or ("", 0)
        local = chan.get_extra_info("sockname") or ("", 0)
        env["SSH_CONNECTION"] = f"{peer[0]} {peer[1]} {local[0]} {local[1]}"
        return env


class _HostServer(asyncssh.SSHServer):
    def __init__(self, host: _SimulatedHost) -> None:
        self._host = host
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._host.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._host.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # any user name, with the one client key

    def session_requested(self) -> _ExecSession:
        return _ExecSession(self._host)


class DemoServer:
    """Every simulated host's listener, and everything their sessions started."""

    def __init__(self, spec: ServerSpec, *, user: str | None = None) -> None:
        self.spec = spec
        self.user = user or getpass.getuser()
        self.children: set[asyncio.SubprocessTransport] = set()
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._acceptors: list[asyncssh.SSHAcceptor] = []

    async def start(self) -> dict[str, int]:
        """Listen for every host; returns each host's port."""
        options = asyncssh.SSHServerConnectionOptions(
            server_host_keys=[asyncssh.read_private_key(self.spec.host_key)],
            authorized_client_keys=asyncssh.read_authorized_keys(self.spec.client_key),
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            encoding=None,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
        )
        ports: dict[str, int] = {}
        for spec in self.spec.hosts:
            host = _SimulatedHost(self, spec)
            acceptor = await asyncssh.listen(
                spec.address,
                spec.port,
                server_factory=functools.partial(_HostServer, host),
                options=options,
            )
            self._acceptors.append(acceptor)
            ports[spec.name] = acceptor.get_port()
        return ports

    async def stop(self) -> None:
        """Stop listening, drop every connection, kill every process started; idempotent."""
        for acceptor in self._acceptors:
            acceptor.close()
        for conn in list(self.connections):
            conn.abort()
        if not await self._terminate(signal.SIGTERM):
            await self._terminate(signal.SIGKILL)
        for transport in list(self.children):
            transport.close()
        self.children.clear()
        for acceptor in self._acceptors:
            await acceptor.wait_closed()
        self._acceptors.clear()

    async def _terminate(self, signum: int) -> bool:
        """Signal every child's group and every marked process; True once all are gone."""
        for transport in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(transport.get_pid(), signum)
        kill_marked(self.spec.token, signum)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _GRACE
        while loop.time() < deadline:
            if not self.children and not _marked_processes(self.spec.token):
                return True
            await asyncio.sleep(0.05)
        return False


# ---------------------------------------------------------------------------------------------
# Processes carrying the token


def _marked_processes(token: str) -> list[int]:
    """Pids whose environment has TOKEN_VAR=token (Linux; elsewhere none are found)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    needle = b"\0" + f"{TOKEN_VAR}={token}".encode() + b"\0"
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in b"\0" + environ + b"\0":
            found.append(int(entry.name))
    return found


def kill_marked(token: str, signum: int) -> int:
    """Send `signum` to every process carrying the token; returns how many were signalled."""
    count = 0
    for pid in _marked_processes(token):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
            count += 1
    return count


# ---------------------------------------------------------------------------------------------
# The process


def _use_pidfd_watcher() -> None:
    """Python 3.11 watches each child with a thread; a pidfd costs a file descriptor instead."""
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "PidfdChildWatcher"):
        return  # 3.12 chooses pidfds on its own
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


async def serve(spec: ServerSpec, *, ready: Mapping[str, object] | None = None) -> None:
    """Run the server until stdin reaches EOF or a stop signal arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)

    def on_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            stop.set()

    loop.add_reader(0, on_stdin)
    server = DemoServer(spec)
    try:
        ports = await server.start()
        line = json.dumps({"ports": ports, **(ready or {})}) + "\n"
        os.write(1, line.encode())
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fleet.demo.server",
        description="Serve the simulated hosts of `fleet demo` over SSH until stdin closes.",
    )
    parser.add_argument(
        "spec", type=Path, help="the server spec (JSON) written by fleet.demo.simulation"
    )
    args = parser.parse_args(argv)
    spec = ServerSpec.parse(args.spec.read_text())
    raise_nofile_limit()
    _use_pidfd_watcher()
    asyncio.run(serve(spec, ready={"pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
