"""The simulated fleet behind `fleet demo`: N NixOS-like hosts on loopback, no sshd needed.

`start_demo` lays out a work directory, starts `fleet.demo.server` (asyncssh's SSH server, in
its own process) with one listener per host, and yields a `DemoFleet` whose `fleet.toml`
drives those hosts like real ones:

    WORKDIR/
      fleet.toml, known_hosts       the inventory and the hosts' keys ([addr]:port lines)
      keys/                         the host key and the client key (ed25519, made here)
      upstream.git                  the shared config repository (bare, branch main)
      admin/                        a checkout of it: the controller's repo, where commits start
      hosts/<name>/                 a host: cwd and HOME of its commands
        etc/nixos/                  its checkout of upstream (the host's `repo`), sparse: the
                                    top-level files and its own hosts/<name>/
        state/                      the stubs' state (FLEET_STUB_STATE): generations/,
                                    profile and current-system (the `system_profile`)
        run/                        its `run_dir`
      server.json, server.log       the server's spec and its stderr

Every host starts on generation 1, built from the first commit. Then a second commit, pushed
to upstream while the hosts are behind, changes every host's configuration and breaks one
(`BROKEN` in its configuration.nix): `pull` then `switch` succeeds everywhere but there, where
the stub nixos-rebuild fails because of what the host pulled. The repositories and their two
commits are made by fleet.demo.repos.

Each host listens on its own address, 127.0.0.2, 127.0.0.3, ... when the system routes all of
127/8 to loopback (Linux), else all on 127.0.0.1 with a port each (darwin). The server exits
when the `with` block ends, or when this process dies (it watches its stdin for EOF); the
processes it started are killed with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import ipaddress
import json
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fleet.demo.repos import ROLES, seed_repositories
from fleet.demo.server import HostSpec, ServerSpec, kill_marked
from fleet.errors import ConfigError, FleetError
from fleet.transport._asyncssh import asyncssh

AUTO: Final = "auto"  # `break_host` default: break the middle host (none when there is one)
MAX_HOSTS: Final = 5000
_READY_TIMEOUT = 30.0  # seconds, plus 50 ms per host
_STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class DemoHost:
    name: str
    address: str
    port: int
    home: Path
    repo: Path
    state_dir: Path
    run_dir: Path

    @property
    def system_profile(self) -> Path:
        return self.state_dir / "current-system"


@dataclass(frozen=True)
class DemoFleet:
    workdir: Path
    config_path: Path
    known_hosts: Path
    hosts: tuple[str, ...]
    identity_file: Path
    upstream: Path  # the bare repository every host pulls from
    admin_repo: Path  # a checkout of upstream (the [controller] repo)
    broken: tuple[str, ...]  # hosts whose configuration the release commit breaks
    initial_commit: str  # what every host has checked out and runs (generation 1)
    release_commit: str  # upstream's main: what a pull brings
    members: tuple[DemoHost, ...]
    user: str
    server_pid: int

    def host(self, name: str) -> DemoHost:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)


@contextlib.contextmanager
def start_demo(
    workdir: Path,
    n: int = 5,
    *,
    single_address: bool | None = None,
    break_host: str | Collection[str] | None = AUTO,
    durations: float | Mapping[str, float] | None = None,
    stubs_dir: Path | None = None,
) -> Iterator[DemoFleet]:
    """Start a simulated fleet of `n` hosts in `workdir` (created; must be empty).

    `single_address`: None picks by what the system supports; True puts every host on
    127.0.0.1. `break_host`: the host(s) the release commit breaks (AUTO: the middle one).
    `durations`: seconds each switch takes (one value, or per host name), for benchmarks.
    `stubs_dir`: the directory put first on the hosts' PATH (default: fleet's own stubs).
    """
    names = host_names(n)
    broken = _broken_hosts(names, break_host)
    delays = _delays(names, durations)
    workdir = _empty_workdir(workdir)
    if single_address is None:
        single_address = not loopback_aliases_available()
    user = getpass.getuser()
    members = _layout(workdir, names, single_address)
    token = secrets.token_hex(16)
    identity_file = _write_keys(workdir / "keys")
    spec = ServerSpec(
        host_key=str(workdir / "keys" / "ssh_host_ed25519_key"),
        client_key=str(identity_file) + ".pub",
        stubs_dir=str(stubs_dir or Path(__file__).parent / "stubs"),
        token=token,
        hosts=tuple(HostSpec(m.name, m.address, str(m.home), str(m.state_dir)) for m in members),
    )
    spec_path = workdir / "server.json"
    spec_path.write_text(spec.to_json())
    server = _ServerProcess.spawn(spec_path, workdir / "server.log", token)
    try:
        checkouts = {m.name: m.repo for m in members}
        repos = seed_repositories(workdir, checkouts, broken)  # while the server starts
        for member in members:
            _seed_state(member, repos.initial, delays.get(member.name))
        ports = server.wait_ready(_READY_TIMEOUT + 0.05 * n)
        members = [dataclasses.replace(m, port=ports[m.name]) for m in members]
        known_hosts = workdir / "known_hosts"
        host_key = asyncssh.read_private_key(spec.host_key)
        known_hosts.write_text(render_known_hosts(members, host_key))
        fleet = DemoFleet(
            workdir=workdir,
            config_path=workdir / "fleet.toml",
            known_hosts=known_hosts,
            hosts=tuple(names),
            identity_file=identity_file,
            upstream=repos.upstream,
            admin_repo=repos.admin,
            broken=broken,
            initial_commit=repos.initial,
            release_commit=repos.release,
            members=tuple(members),
            user=user,
            server_pid=server.pid,
        )
        fleet.config_path.write_text(render_config(fleet))
        yield fleet
    finally:
        server.stop()


def host_names(n: int) -> list[str]:
    if not 1 <= n <= MAX_HOSTS:
        raise ConfigError(f"a demo fleet has 1 to {MAX_HOSTS} hosts, not {n}")
    width = max(2, len(str(n)))
    return [f"host-{i:0{width}d}" for i in range(1, n + 1)]


def loopback_aliases_available() -> bool:
    """Whether 127.0.0.2 can be bound (Linux routes 127/8 to lo; darwin only has 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.2", 0))
        except OSError:
            return False
    return True


def _broken_hosts(names: list[str], break_host: str | Collection[str] | None) -> tuple[str, ...]:
    if break_host is None:
        return ()
    if break_host == AUTO:
        return (names[len(names) // 2],) if len(names) > 1 else ()
    chosen = (break_host,) if isinstance(break_host, str) else tuple(break_host)
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ConfigError(f"no demo host named {', '.join(unknown)} (hosts: {names[0]}...)")
    return tuple(sorted(set(chosen)))


def _delays(names: list[str], durations: float | Mapping[str, float] | None) -> dict[str, float]:
    if durations is None:
        return {}
    if isinstance(durations, int | float):
        return dict.fromkeys(names, float(durations))
    unknown = sorted(set(durations) - set(names))
    if unknown:
        raise ConfigError(f"durations: no demo host named {', '.join(unknown)}")
    return {name: float(seconds) for name, seconds in durations.items()}


def _empty_workdir(workdir: Path) -> Path:
    workdir = workdir.expanduser().absolute()
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ConfigError(f"the demo directory {workdir} is not an empty directory")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _layout(workdir: Path, names: list[str], single_address: bool) -> list[DemoHost]:
    first = ipaddress.IPv4Address("127.0.0.1" if single_address else "127.0.0.2")
    members = []
    for i, name in enumerate(names):
        home = workdir / "hosts" / name
        member = DemoHost(
            name=name,
            address=str(first if single_address else first + i),
            port=0,
            home=home,
            repo=home / "etc" / "nixos",
            state_dir=home / "state",
            run_dir=home / "run",
        )
        for directory in (member.state_dir, member.run_dir, member.repo.parent):
            directory.mkdir(parents=True)
        members.append(member)
    return members


def _write_keys(directory: Path) -> Path:
    """Make the host key and the client key; returns the client key's path."""
    directory.mkdir(mode=0o700)
    host_key = asyncssh.generate_private_key("ssh-ed25519", comment="fleet-demo-host")
    host_key.write_private_key(directory / "ssh_host_ed25519_key")
    client_key = asyncssh.generate_private_key("ssh-ed25519", comment="fleet-demo")
    identity = directory / "id_ed25519"
    client_key.write_private_key(identity)
    client_key.write_public_key(directory / "id_ed25519.pub")
    for path in directory.iterdir():
        path.chmod(0o600)
    return identity


def _seed_state(member: DemoHost, commit: str, switch_delay: float | None) -> None:
    """Generation 1, built from `commit`, as the stub nixos-rebuild would have left it."""
    generation = member.state_dir / "generations" / "1"
    generation.mkdir(parents=True)
    (generation / "commit").write_text(commit + "\n")
    (generation / "attr").write_text(member.name + "\n")
    (generation / "flake").write_text(f"{member.repo}#{member.name}\n")
    (member.state_dir / "profile").symlink_to(generation)
    (member.state_dir / "current-system").symlink_to(generation)
    if switch_delay is not None:
        (member.state_dir / "switch-delay").write_text(f"{switch_delay:g}\n")


# ---------------------------------------------------------------------------------------------
# The files a client uses


def render_known_hosts(members: Collection[DemoHost], host_key: asyncssh.SSHKey) -> str:
    public = host_key.export_public_key("openssh").decode().split()
    entry = " ".join(public[:2])  # algorithm and key, without the comment
    return "".join(f"[{m.address}]:{m.port} {entry}\n" for m in members)


def _toml(value: str | int | Collection[str]) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    return "[" + ", ".join(json.dumps(v) for v in value) + "]"


def render_config(fleet: DemoFleet) -> str:
    """The fleet.toml of a demo fleet."""
    lines = [
        f"# The simulated fleet of `fleet demo`: {len(fleet.hosts)} hosts served by",
        f"# fleet.demo.server (pid {fleet.server_pid}). It disappears with the demo.",
        "",
        "[ssh]",
        f"identity_file = {_toml(str(fleet.identity_file))}",
        f"known_hosts = {_toml([str(fleet.known_hosts)])}",
        'host_key_policy = "strict"',
        "",
        "[controller]",
        f"repo = {_toml(str(fleet.admin_repo))}",
        'remote = "origin"',
        'branch = "main"',
        "",
        "[defaults]",
        f"user = {_toml(fleet.user)}  # the demo server takes any user name with the key",
        'detach = "setsid"',
    ]
    for i, m in enumerate(fleet.members):
        lines += [
            "",
            f"[hosts.{m.name}]",
            f"address = {_toml(m.address)}",
            f"port = {m.port}",
            f"tags = {_toml(['demo', ROLES[i % len(ROLES)]])}",
            f"repo = {_toml(str(m.repo))}",
            f"system_profile = {_toml(str(m.system_profile))}",
            f"run_dir = {_toml(str(m.run_dir))}",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The server process


class _ServerProcess:
    """`python -m fleet.demo.server`, in its own session, fed a stdin pipe it watches."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path, token: str) -> None:
        self._popen = popen
        self._log = log
        self._token = token
        self.pid = popen.pid

    @classmethod
    def spawn(cls, spec: Path, log: Path, token: str) -> _ServerProcess:
        package_root = str(Path(__file__).resolve().parent.parent)
        pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        with log.open("wb") as stderr:
            popen = subprocess.Popen(
                [sys.executable, "-m", "fleet.demo.server", str(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=spec.parent,
                env={**os.environ, "PYTHONPATH": pythonpath},
                start_new_session=True,  # ^C at the terminal is for us, not for it
            )
        return cls(popen, log, token)

    def wait_ready(self, timeout: float) -> dict[str, int]:
        """Wait for the server's ready line: every listener is accepting."""
        assert self._popen.stdout is not None
        line = _read_line(self._popen.stdout.fileno(), timeout)
        if not line:
            if self._popen.poll() is None:
                raise FleetError(f"the demo server did not start within {timeout:g}s")
            raise FleetError(f"the demo server failed to start: {self._log_tail()}")
        ports: dict[str, int] = json.loads(line)["ports"]
        return ports

    def stop(self) -> None:
        """Close its stdin (it cleans up and exits); kill it if it does not; sweep leftovers."""
        popen = self._popen
        if popen.stdin is not None:
            with contextlib.suppress(OSError):
                popen.stdin.close()
        try:
            popen.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
        if popen.stdout is not None:
            popen.stdout.close()
        kill_marked(self._token, signal.SIGKILL)

    def _log_tail(self) -> str:
        try:
            lines = self._log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return (lines or ["no output"])[-1] + f" (see {self._log})"


def _read_line(fd: int, timeout: float) -> bytes:
    """Read one line from `fd`, or what came before EOF or the deadline."""
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return b""
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""
            data += chunk
    return data
