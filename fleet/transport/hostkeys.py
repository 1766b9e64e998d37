"""Host keys: checking a server's key against fleet's known_hosts files, under its policy.

`HostKeyCheck` is what an SSH connection asks about each server key (`ssh.py` hands it to
asyncssh): asyncssh matches the recorded keys itself, and the check then tells an unknown host
(accepted, and recorded, under `accept-new`) from a changed key (always refused) and words the
`HostKeyError`. `KnownHostsCache` parses the files once for all the hosts of a run.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from pathlib import Path

from fleet.errors import HostKeyError
from fleet.models import HostKeyPolicy, SshSettings
from fleet.transport._asyncssh import asyncssh


def known_hosts_name(hostname: str, port: int) -> str:
    """A host as known_hosts names it: `host`, or `[host]:port` off port 22."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


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


class HostKeyCheck:
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
        label = known_hosts_name(host, port)
        recorded = self._recorded_lines(host, addr, port)
        server_key = f"{key.get_algorithm()} {key.get_fingerprint()}"
        if recorded:
            path, number = recorded[0]
            self.error = HostKeyError(
                self._host_name,
                f"host key mismatch for {label}: the key differs from {path}:{number} — "
                "possible man-in-the-middle; if the host was reinstalled, remove the old key "
                f"with: ssh-keygen -R {shlex.quote(label)} -f {shlex.quote(str(path))} "
                f"(server key: {server_key})",
                changed=True,
            )
            return False
        if self._policy is not HostKeyPolicy.ACCEPT_NEW or not self._paths:
            files = ", ".join(self._shown) or "any file"
            self.error = HostKeyError(
                self._host_name,
                f"unknown host key for {label} (not in {files}); add it to known_hosts or "
                f'use host_key_policy = "accept-new" (server key: {server_key})',
                changed=False,
            )
            return False
        try:
            self._record(label, key)
        except OSError as exc:
            self.error = HostKeyError(
                self._host_name,
                f"cannot record the host key of {label} in {self._paths[0]}: {exc.strerror or exc}",
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
