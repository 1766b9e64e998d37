"""How fleet dials a host: the `[ssh]` table of fleet.toml, and each host's connection.

A host's hostname, user, port, identity files and jump host come from, in order: the host's
table, then `[defaults]`, then ~/.ssh/config matched on the host's `address` (which may be an
alias with HostName, User, Port, IdentityFile, ProxyJump), then fleet's built-in values. A value
taken from ~/.ssh/config is validated like one written in fleet.toml; its error names both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypedDict

from fleet.config.sshconfig import SshConfig, SshConfigEntry
from fleet.config.toml_table import Table, first_set
from fleet.config.validate import (
    check_address,
    check_local_path,
    check_proxy_jump,
    check_user,
    show,
)
from fleet.models import HostKeyPolicy, SshSettings

SSH_KEYS = ("identity_file", "known_hosts", "host_key_policy", "connect_timeout",
            "keepalive_interval")  # fmt: skip


def read_ssh_settings(t: Table) -> SshSettings:
    """The `[ssh]` table: settings for every connection."""
    default = SshSettings()
    known_hosts = t.strings("known_hosts", check_local_path, single_ok=True)
    if known_hosts == ():
        raise t.error("known_hosts", "needs at least one file")
    return SshSettings(
        identity_file=t.string("identity_file", check_local_path),
        known_hosts=default.known_hosts if known_hosts is None else known_hosts,
        host_key_policy=first_set(
            t.choice("host_key_policy", HostKeyPolicy), default.host_key_policy
        ),
        connect_timeout=first_set(t.seconds("connect_timeout"), default.connect_timeout),
        keepalive_interval=first_set(
            t.seconds("keepalive_interval", zero_ok=True), default.keepalive_interval
        ),
    )


class DiallingSettings(Protocol):
    """What one table (a host's, or `[defaults]`) sets for dialling; None: not set there."""

    @property
    def user(self) -> str | None: ...
    @property
    def port(self) -> int | None: ...
    @property
    def identity_file(self) -> str | None: ...


class Dialling(TypedDict):
    """The `Host` fields that say how the host is dialled."""

    hostname: str
    user: str
    port: int
    identity_files: tuple[str, ...]
    proxy_jump: str | None


def host_dialling(
    t: Table,
    address: str,
    own: DiallingSettings,
    defaults: DiallingSettings,
    ssh: SshSettings,
    ssh_config: SshConfig | None,
) -> Dialling:
    """How a host is dialled: its table, then [defaults], then ~/.ssh/config, then built-ins."""
    entry = ssh_config.resolve(address) if ssh_config else SshConfigEntry()

    def checked(key: str, value: str, check: Callable[[str], None]) -> str:
        try:
            check(value)
        except ValueError as exc:
            where = f"{entry.source}, for {show(address)}"
            raise t.error(key, f"{exc}, from ssh config ({where})") from None
        return value

    user = own.user or defaults.user
    if user is None and entry.user is not None:
        user = checked("user", entry.user, check_user)
    identity = own.identity_file or defaults.identity_file
    identity_files = [
        *([identity] if identity else []),
        *(checked("identity_file", f, check_local_path) for f in entry.identity_files),
        *([ssh.identity_file] if ssh.identity_file else []),
    ]
    hostname, proxy = entry.hostname, entry.proxy_jump
    return Dialling(
        hostname=checked("address", hostname, check_address) if hostname else address,
        user=first_set(user, "root"),
        port=first_set(own.port, defaults.port, entry.port, 22),
        identity_files=tuple(dict.fromkeys(identity_files)),
        proxy_jump=checked("address", proxy, check_proxy_jump) if proxy else None,
    )
