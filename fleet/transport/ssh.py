"""`SshSession`: one asyncssh connection per host for a whole run, with one persistent shell.

The connection never reads ~/.ssh/config (config.py resolves it), never prompts (public keys
only: the ssh-agent and the identity files), always checks host keys against fleet's
known_hosts files under its policy (`_HostKeyCheck`), and reaches hosts behind a ProxyJump
through asyncssh tunnels. Commands run in the persistent shell (`ShellSession`); kills go over
a new channel of the same connection. This is the only module of fleet that imports asyncssh
(besides the simulated fleet of demo.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import resource
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from fleet.errors import ConnectError, HostKeyError
from fleet.models import Host, HostKeyPolicy, SshSettings
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
    """Raise the soft limit on open files to the hard limit (a fleet holds many sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
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
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @classmethod
    def parse(cls, spec: str, *, default_user: str) -> Hop:
        """`[user@]host[:port]` (host may be `[v6addr]`), or `ssh://` the same."""
        rest = spec.strip().removeprefix("ssh://")
        user, at, rest = rest.rpartition("@")
        port = 22
        if rest.startswith("["):
            hostname, _, tail = rest[1:].partition("]")
            if tail.startswith(":"):
                port = int(tail[1:])
        elif rest.count(":") == 1:
            hostname, _, port_text = rest.partition(":")
            port = int(port_text)
        else:
            hostname = rest
        if not hostname or not 0 < port < 65536:
            raise ValueError(f"not a jump host: {spec!r}")
        return cls(user if at else default_user, hostname, port)


def hops_of(host: Host) -> list[Hop]:
    """The jump hosts (ProxyJump, comma-separated, as OpenSSH) then the host itself."""
    hops = []
    if host.proxy_jump and host.proxy_jump.lower() != "none":
        local_user = getpass.getuser()  # OpenSSH's default user for a jump host
        hops = [Hop.parse(part, default_user=local_user) for part in host.proxy_jump.split(",")]
    return [*hops, Hop(host.user, host.hostname, host.port)]


# ---------------------------------------------------------------------------------------------
# Host keys


class KnownHostsCache:
    """fleet's known_hosts files, parsed once for all the hosts of a run (not once per host:
    that is n parses of n lines), and parsed again when a file changes (accept-new)."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[Path, ...], tuple[object, asyncssh.SSHKnownHosts]] = {}

    def load(self, paths: list[Path]) -> asyncssh.SSHKnownHosts:
        key = tuple(paths)
        stamp = tuple(_stamp(path) for path in paths)
        cached = self._parsed.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        known = asyncssh.SSHKnownHosts()
        for path in paths:
            for line in _read_lines(path):
                with contextlib.suppress(ValueError):  # OpenSSH skips lines it cannot parse
                    known.load(line)
        self._parsed[key] = (stamp, known)
        return known


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class _HostKeyCheck:
    """Checks a server's host key against fleet's known_hosts files, under its policy.

    asyncssh matches the files' keys itself (hashed names, patterns, @revoked, CA keys) and
    asks `validate` only about a key that none of them trusts; `validate` then tells an
    unknown host (no key recorded: accepted under accept-new) from a changed key (a key is
    recorded for the host, but not this one: always refused) and leaves the error to raise.
    """

    def __init__(
        self, host_name: str, settings: SshSettings, known_hosts: KnownHostsCache | None = None
    ) -> None:
        self._host_name = host_name
        self._policy = settings.host_key_policy
        self._shown = settings.known_hosts
        self._paths = [Path(p).expanduser() for p in settings.known_hosts]
        self.known = (known_hosts or KnownHostsCache()).load(self._paths)
        self.error: HostKeyError | None = None

    def validate(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        hop = Hop("", host, port)
        recorded = self._recorded_lines(host, addr, port)
        server_key = f"{key.get_algorithm()} {key.get_fingerprint()}"
        if recorded:
            path, number = recorded[0]
            self.error = HostKeyError(
                self._host_name,
                f"host key mismatch for {hop.label}: the key differs from {path}:{number} — "
                "possible man-in-the-middle; if the host was reinstalled, remove the old key "
                f"with: ssh-keygen -R {shlex.quote(hop.label)} -f {shlex.quote(str(path))} "
                f"(server key: {server_key})",
                changed=True,
            )
            return False
        if self._policy is not HostKeyPolicy.ACCEPT_NEW or not self._paths:
            files = ", ".join(self._shown) or "any file"
            self.error = HostKeyError(
                self._host_name,
                f"unknown host key for {hop.label} (not in {files}); add it to known_hosts or "
                f'use host_key_policy = "accept-new" (server key: {server_key})',
                changed=False,
            )
            return False
        try:
            self._record(hop.label, key)
        except OSError as exc:
            self.error = HostKeyError(
                self._host_name,
                f"cannot record the host key of {hop.label} in {self._paths[0]}: "
                f"{exc.strerror or exc}",
                changed=False,
            )
            return False
        return True

    def _recorded_lines(self, host: str, addr: str, port: int) -> list[tuple[Path, int]]:
        """Where a plain key for this host is recorded (as asyncssh matches: by name or
        address, hashed or not, `[host]:port` first, else without the port)."""
        found = []
        for path in self._paths:
            for number, line in enumerate(_read_lines(path), 1):
                try:
                    entry = asyncssh.import_known_hosts(line)
                except ValueError:
                    continue
                if entry.match(host, addr, port if port != 22 else None)[0]:
                    found.append((path, number))
        return found

    def _record(self, label: str, key: asyncssh.SSHKey) -> None:
        """Append `label keytype base64` to the first known_hosts file (0600, dir 0700)."""
        path = self._paths[0]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        algorithm, data = key.export_public_key("openssh").decode().split()[:2]
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as file:
            size = file.seek(0, os.SEEK_END)
            if size:
                file.seek(size - 1)
                newline = file.read(1) != b"\n"
            else:
                newline = False
            file.write(b"\n" * newline + f"{label} {algorithm} {data}\n".encode())


def _read_lines(path: Path) -> list[str]:
    """A known_hosts file's lines (line numbers kept), [] when it is missing or unreadable."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [
        line if line.strip() and not line.lstrip().startswith("#") else ""
        for line in text.splitlines()
    ]


# ---------------------------------------------------------------------------------------------
# The connection


class _Client(asyncssh.SSHClient):
    def __init__(self, check: _HostKeyCheck, on_lost: Callable[[_Client, str], None]) -> None:
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
        check = _HostKeyCheck(self.host.name, self._ssh, self._known_hosts)
        client = _Client(check, self._client_lost)
        keys = self._identity_files()
        tunnel = self._connections[-1][0] if self._connections else None
        try:
            async with asyncio.timeout(self._ssh.connect_timeout + 1):
                connection = await asyncssh.connect(
                    hop.hostname,
                    hop.port,
                    tunnel=tunnel or (),
                    config=[],  # fleet reads ~/.ssh/config itself (config.py)
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

    def _connect_error(self, exc: Exception, hop: Hop, check: _HostKeyCheck) -> ConnectError:
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
