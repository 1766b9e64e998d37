"""`SshSession`: one asyncssh connection per host for a whole run, with one persistent shell.

The connection never reads ~/.ssh/config (fleet.config resolves it), never prompts (public keys
only: the ssh-agent and the identity files), always checks host keys against fleet's
known_hosts files under its policy (`HostKeyCheck`, in hostkeys.py), and reaches hosts behind a
ProxyJump through asyncssh tunnels. Commands run in the persistent shell (`ShellSession`); kills
go over a new channel of the same connection. This module and hostkeys.py are the only ones of
fleet that use asyncssh (besides the simulated fleet: fleet.demo); they import
it from _asyncssh.py, which silences its import-time cryptography deprecation warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import ConnectError, HostKeyError
from fleet.models import Host, SshSettings, parse_proxy_jump
from fleet.transport._asyncssh import asyncssh
from fleet.transport.hostkeys import HostKeyCheck, KnownHostsCache, known_hosts_name
from fleet.transport.shell import CLOSE_TIMEOUT, ShellSession, ShellStream, StreamClosed

SHELL_COMMAND = "exec sh"  # the persistent shell, started by the user's login shell
READ_SIZE = 64 * 1024
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa", "id_ed25519_sk", "id_ecdsa_sk")


def _ciphers() -> tuple[str, ...]:
    """asyncssh's default ciphers with AES-GCM first: with AES-NI a packet costs the controller
    (and sshd) far less than with chacha20-poly1305, asyncssh's own first choice, whose
    Python glue sets up new cipher contexts for every packet."""
    default = [alg.decode() for alg in asyncssh.encryption.get_default_encryption_algs()]
    gcm = sorted(alg for alg in default if "-gcm@" in alg)  # aes128-gcm, then aes256-gcm
    return (*gcm, *(alg for alg in default if alg not in gcm))


CIPHERS = _ciphers()


def raise_nofile_limit() -> int:
    """Raise the soft limit on open files to the hard limit (a fleet, or the demo's server of
    simulated hosts, holds many sockets); the soft limit it ends at."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        for value in (target, 10240):  # darwin refuses more than OPEN_MAX
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (value, hard))
            except (ValueError, OSError):
                continue
            return value
    return soft


# ---------------------------------------------------------------------------------------------
# Where to connect


@dataclass(frozen=True)
class Hop:
    """One SSH connection on the way to a host: a jump host or the host itself."""

    user: str
    hostname: str
    port: int = 22

    @property
    def label(self) -> str:
        """The host as known_hosts names it: `host`, or `[host]:port` off port 22."""
        return known_hosts_name(self.hostname, self.port)


def hops_of(host: Host) -> list[Hop]:
    """The jump hosts (ProxyJump, comma-separated, as OpenSSH) then the host itself."""
    hops = []
    if host.proxy_jump and host.proxy_jump.lower() != "none":
        local_user = getpass.getuser()  # OpenSSH's default user for a jump host
        hops = [
            Hop(jump.user or local_user, jump.hostname, jump.port or 22)
            for jump in parse_proxy_jump(host.proxy_jump)  # ValueError for a bad hop
        ]
    return [*hops, Hop(host.user, host.hostname, host.port)]


# ---------------------------------------------------------------------------------------------
# The connection


class _Client(asyncssh.SSHClient):
    def __init__(self, check: HostKeyCheck, on_lost: Callable[[_Client, str], None]) -> None:
        self.check = check
        self._on_lost = on_lost

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self.check.validate(host, addr, port, key)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(self, _reason(exc) if exc is not None else "the host closed the connection")


class _ChannelStream(ShellStream):
    """The persistent shell's channel."""

    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._process = process

    async def write(self, data: bytes) -> None:
        try:
            self._process.stdin.write(data)
            await self._process.stdin.drain()
        except (asyncssh.Error, OSError) as exc:
            raise StreamClosed(_reason(exc)) from None

    async def read(self) -> bytes:
        try:
            return await self._process.stdout.read(READ_SIZE)
        except (asyncssh.Error, OSError) as exc:
            raise StreamClosed(_reason(exc)) from None

    async def close(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            self._process.stdin.write_eof()
        self._process.close()
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._process.wait_closed()


class SshSession(ShellSession):
    """A host reached over SSH: one connection (through its jump hosts) for the whole run."""

    def __init__(
        self,
        host: Host,
        ssh: SshSettings,
        *,
        host_lock: bool = True,
        known_hosts: KnownHostsCache | None = None,
    ) -> None:
        super().__init__(host, host_lock=host_lock)
        self._ssh = ssh
        self._known_hosts = known_hosts or KnownHostsCache()
        self._connections: list[tuple[asyncssh.SSHClientConnection, _Client]] = []

    # -- connect / close

    async def connect(self) -> None:
        await self.close()
        hops = hops_of(self.host)
        try:
            for hop in hops:
                self._connections.append(await self._connect_hop(hop, jump=hop is not hops[-1]))
            await self._start_shell()
        except StreamClosed as exc:
            await self.close()
            raise ConnectError(self.host.name, f"cannot start a shell: {exc.reason}") from None
        except BaseException:
            await self.close()
            raise

    async def reconnect(self) -> None:
        await self.connect()

    async def close(self) -> None:
        self._lost = "the session is closed"
        await self._stop_shell()
        connections, self._connections = self._connections, []
        for connection, _client in reversed(connections):
            connection.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await connection.wait_closed()

    async def _drop(self) -> None:
        for connection, _client in self._connections:
            connection.abort()

    async def _connect_hop(
        self, hop: Hop, *, jump: bool
    ) -> tuple[asyncssh.SSHClientConnection, _Client]:
        check = HostKeyCheck(self.host.name, self._ssh, self._known_hosts)
        client = _Client(check, self._client_lost)
        keys = self._identity_files()
        tunnel = self._connections[-1][0] if self._connections else None
        try:
            async with asyncio.timeout(self._ssh.connect_timeout + 1):
                connection = await asyncssh.connect(
                    hop.hostname,
                    hop.port,
                    tunnel=tunnel or (),
                    config=[],  # fleet reads ~/.ssh/config itself (fleet.config)
                    username=hop.user,
                    known_hosts=check.known,
                    client_factory=lambda: client,
                    client_keys=[str(p) for p in keys if p.exists()] or (),
                    ignore_encrypted=True,  # an encrypted key is the agent's business
                    preferred_auth="publickey",
                    gss_kex=False,
                    gss_auth=False,
                    agent_forwarding=False,
                    connect_timeout=self._ssh.connect_timeout,
                    keepalive_interval=self._ssh.keepalive_interval,
                    encryption_algs=CIPHERS,
                )
        except (asyncssh.Error, OSError, ValueError) as exc:  # TimeoutError is an OSError
            error = self._connect_error(exc, hop, check)
            if jump and not isinstance(error, HostKeyError):
                raise ConnectError(
                    self.host.name, f"jump host {hop.label}: {error.reason}"
                ) from None
            raise error from None
        return connection, client

    def _identity_files(self) -> list[Path]:
        files = [*self.host.identity_files]
        if self._ssh.identity_file and self._ssh.identity_file not in files:
            files.append(self._ssh.identity_file)
        return [Path(f).expanduser() for f in files]

    def _connect_error(self, exc: Exception, hop: Hop, check: HostKeyCheck) -> ConnectError:
        name = self.host.name
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return check.error or HostKeyError(
                name, f"host key of {hop.label} not accepted: {exc.reason}", changed=False
            )
        if isinstance(exc, asyncssh.PermissionDenied):
            tried = self._tried_credentials()
            return ConnectError(
                name, f"authentication failed for {hop.user}@{hop.label} (tried: {tried})"
            )
        if isinstance(exc, TimeoutError):
            timeout = self._ssh.connect_timeout
            return ConnectError(name, f"connection to {hop.label} timed out after {timeout:g}s")
        if isinstance(exc, socket.gaierror):
            return ConnectError(name, f"name does not resolve: {hop.hostname}")
        if isinstance(exc, ConnectionRefusedError):
            return ConnectError(name, f"connection refused by {hop.label}")
        if isinstance(exc, asyncssh.ChannelOpenError):
            return ConnectError(name, f"the jump host cannot reach {hop.label}: {exc.reason}")
        return ConnectError(name, f"cannot connect to {hop.label}: {_reason(exc)}")

    def _tried_credentials(self) -> str:
        tried = ["agent"] if os.environ.get("SSH_AUTH_SOCK") else []
        files = self._identity_files()
        tried += [f"{p}" if p.exists() else f"{p} (missing)" for p in files]
        if not any(p.exists() for p in files):  # then asyncssh tried the default keys
            ssh_dir = Path("~/.ssh").expanduser()
            tried += [str(ssh_dir / k) for k in DEFAULT_KEYS if (ssh_dir / k).exists()]
        return ", ".join(tried) or "no agent, no keys"

    # -- the shell and side commands

    def _client_lost(self, client: _Client, reason: str) -> None:
        if self._lost is None and any(c is client for _, c in self._connections):
            generic = reason.lower() in ("connection lost", "the host closed the connection")
            self._lost = "connection lost" if generic else f"connection lost ({reason})"

    def _connection(self) -> asyncssh.SSHClientConnection:
        if not self._connections:
            raise StreamClosed("not connected")
        return self._connections[-1][0]

    async def _open_shell(self) -> ShellStream:
        try:
            process = await self._connection().create_process(
                SHELL_COMMAND, encoding=None, stderr=asyncssh.STDOUT
            )
        except (asyncssh.Error, OSError) as exc:
            raise StreamClosed(_reason(exc)) from None
        return _ChannelStream(process)

    async def _run_side(self, script: str) -> int:
        try:
            result = await self._connection().run(
                script, stdin=asyncssh.DEVNULL, encoding=None, check=False
            )
        except (asyncssh.Error, OSError) as exc:
            raise StreamClosed(_reason(exc)) from None
        return result.exit_status if result.exit_status is not None else -1


def _reason(exc: BaseException) -> str:
    """A few words on why a connection or channel failed."""
    if isinstance(exc, asyncssh.DisconnectError | asyncssh.ChannelOpenError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc) or type(exc).__name__).lower()
    return str(exc) or type(exc).__name__
