"""The shared vocabulary of fleet: hosts, ops, pipelines, statuses, results and run options.

Every layer (config, executor, transport, state store, CLI, dashboard) speaks in these frozen
dataclasses and enums. The status algebra (how op statuses make a host status, and host
statuses a run status) lives here too, as pure functions, so that the executor, the store and
the tests agree on it by construction.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from fleet.errors import ConfigError

# Names that end up in file paths, unit names, SQL rows and remote shells are restricted to a
# conservative alphabet. Values that are not names (repo paths, branches, ...) have their own
# validators in config/validate.py and are always shell-quoted.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")


def is_valid_name(value: str) -> bool:
    """True for a host, op or pipeline name fleet accepts (no leading '-' or '.')."""
    return bool(NAME_RE.fullmatch(value)) and ".." not in value


class Scope(StrEnum):
    HOST = "host"
    CONTROLLER = "controller"


# The controller's name wherever a host's name would go: the views, the log directories, the
# dashboard's logs endpoint; and the host name fleet.toml may not use.
CONTROLLER: str = Scope.CONTROLLER.value


class Mode(StrEnum):
    LOCKSTEP = "lockstep"
    STREAMING = "streaming"


class HostKeyPolicy(StrEnum):
    STRICT = "strict"
    ACCEPT_NEW = "accept-new"


class Detach(StrEnum):
    AUTO = "auto"
    SYSTEMD_RUN = "systemd-run"
    SETSID = "setsid"


class OpStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self not in (OpStatus.PENDING, OpStatus.RUNNING)

    @property
    def failed(self) -> bool:
        return self in (OpStatus.FAILED, OpStatus.TIMEOUT)


class HostStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self not in (HostStatus.PENDING, HostStatus.RUNNING)


class RunStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    ABORTED = "ABORTED"

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for a run that ended with this status."""
        return {
            RunStatus.COMPLETE: 0,
            RunStatus.FAILED: 1,
            RunStatus.PARTIAL: 3,
            RunStatus.CANCELLED: 130,
            RunStatus.ABORTED: 1,
            RunStatus.RUNNING: 1,
        }[self]


# ---------------------------------------------------------------------------------------------
# Inventory models


@dataclass(frozen=True)
class SshSettings:
    """The `[ssh]` table: how fleet authenticates hosts and itself."""

    identity_file: str | None = None
    known_hosts: tuple[str, ...] = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    connect_timeout: float = 10.0
    keepalive_interval: float = 15.0


@dataclass(frozen=True)
class Host:
    """One target machine, with every setting resolved (host table > defaults > ssh config)."""

    name: str
    address: str  # as written in fleet.toml (may be an alias in ~/.ssh/config)
    hostname: str  # what is dialled: ssh config's HostName, else address
    port: int = 22
    user: str = "root"
    tags: tuple[str, ...] = ()
    repo: str = "/etc/nixos"
    remote: str = "origin"
    branch: str = "main"
    sudo: bool = False
    flake_attr: str = ""
    restart_units: tuple[str, ...] = ("fleet.service",)
    system_profile: str = "/run/current-system"
    detach: Detach = Detach.AUTO
    run_dir: str = "/run/fleet"  # where detached ops keep pid, output and exit code
    identity_files: tuple[str, ...] = ()
    proxy_jump: str | None = None

    @property
    def attr(self) -> str:
        return self.flake_attr or self.name

    def to_json(self) -> dict[str, Any]:
        """The host as `fleet hosts --json` and the dashboard show it."""
        return {
            "name": self.name,
            "address": self.address,
            "hostname": self.hostname,
            "port": self.port,
            "user": self.user,
            "tags": list(self.tags),
            "repo": self.repo,
            "remote": self.remote,
            "branch": self.branch,
            "sudo": self.sudo,
            "flake_attr": self.attr,
            "restart_units": list(self.restart_units),
            "system_profile": self.system_profile,
            "detach": self.detach.value,
            "proxy_jump": self.proxy_jump,
        }


# OpenSSH's ProxyJump: `[ssh://][user@]host[:port]` hops separated by commas, host maybe `[v6]`.
# Read here once: config checks each hop's user and host, the transport dials them.
JUMP_HOP_RE = re.compile(
    r"(?:ssh://)?(?:(?P<user>[^@]*)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\[\]]+)(?::(?P<port>[0-9]{1,5}))?"
)


@dataclass(frozen=True)
class JumpHost:
    """One hop of a ProxyJump value, as written (no user: the local user; no port: 22)."""

    user: str | None
    hostname: str  # a v6 address without its brackets
    port: int | None = None


def parse_proxy_jump(value: str) -> list[JumpHost]:
    """The hops of a ProxyJump value; ValueError says which hop is not `[user@]host[:port]`."""
    hops = []
    for hop in value.split(","):
        match = JUMP_HOP_RE.fullmatch(hop)
        if not match:
            raise ValueError(f"{hop!r} is not [user@]host[:port]")
        user, host, port = match.group("user", "host", "port")
        if port is not None and not 1 <= int(port) <= 65535:
            raise ValueError(f"port {port} is not 1..65535")
        hops.append(JumpHost(user, host.strip("[]"), int(port) if port is not None else None))
    return hops


@dataclass(frozen=True)
class Privilege:
    sudo: bool = False

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["sudo", "-n", *argv] if self.sudo else list(argv)

    def script(self, script: str) -> str:
        """Run a whole shell fragment with privilege (one sudo for all of it)."""
        return shlex.join(["sudo", "-n", "sh", "-c", script]) if self.sudo else script

    @classmethod
    def of(cls, host: Host) -> Privilege:
        return cls(sudo=host.sudo and host.user != "root")


@dataclass(frozen=True)
class ControllerSettings:
    """The `[controller]` table: the local checkout used by controller ops."""

    repo: str = "~/src/nixcfg"
    flake_input: str = "fleet"
    pr_ref: str = "refs/pull/{pr}/head"
    git_name: str = "fleet"
    git_email: str = "fleet@localhost"
    remote: str = "origin"
    branch: str = "main"


@dataclass(frozen=True)
class Op:
    """An operation a pipeline step runs: built-in (`command` is None) or user-defined."""

    id: str
    description: str
    scope: Scope = Scope.HOST
    timeout: float = 300.0
    warn_after: float | None = None
    retries: int = 0
    command: str | None = None  # a user op's shell command, with {placeholders}
    builtin: bool = True
    switch_like: bool = False  # records system_before / system_after


@dataclass(frozen=True)
class Pipeline:
    id: str
    ops: tuple[str, ...]
    description: str = ""
    builtin: bool = False


# ---------------------------------------------------------------------------------------------
# Results


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    """A run id that sorts by start time: `20261126-003012-3f9a` (UTC, then 4 random hex)."""
    return f"{utcnow():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts else None


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class OpResult:
    op: str
    status: OpStatus = OpStatus.PENDING
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    log: str | None = None
    system_before: str | None = None
    system_after: str | None = None
    attempts: int = 0
    tail: str = ""
    switch_like: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "op": self.op,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "error": self.error,
            "log": self.log,
            "attempts": self.attempts,
        }
        if self.switch_like:
            out["system_before"] = self.system_before
            out["system_after"] = self.system_after
        return out


@dataclass(frozen=True)
class HostResult:
    name: str
    status: HostStatus = HostStatus.PENDING
    failed_op: str | None = None
    ops: tuple[OpResult, ...] = ()
    rolled_back: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "failed_op": self.failed_op,
            "rolled_back": self.rolled_back,
            "ops": [o.to_json() for o in self.ops],
        }


@dataclass(frozen=True)
class Run:
    run_id: str
    pipeline: str
    status: RunStatus = RunStatus.RUNNING
    started_at: datetime | None = None
    finished_at: datetime | None = None
    retry_of: str | None = None
    controller_ops: tuple[OpResult, ...] = ()
    hosts: Mapping[str, HostResult] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status.value,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "retry_of": self.retry_of,
            "options": dict(self.options),
            "controller": {"ops": [o.to_json() for o in self.controller_ops]},
            "hosts": {name: h.to_json() for name, h in self.hosts.items()},
        }

    def log_keys(
        self, host: str | None = None, op: str | None = None
    ) -> Iterator[tuple[str | None, str]]:
        """(host, op) of every op whose log is asked for, host None for a controller op: all of
        them, one host's (CONTROLLER: the controller's) and/or one op's. An unknown host or op
        is a ConfigError naming the run."""
        if host is not None and host != CONTROLLER and host not in self.hosts:
            raise ConfigError(f"run {self.run_id} has no host {host!r}")
        keys: list[tuple[str | None, str]] = []
        if host in (None, CONTROLLER):
            keys.extend((None, r.op) for r in self.controller_ops)
        for name, result in self.hosts.items():
            if host in (None, name):
                keys.extend((name, r.op) for r in result.ops)
        if op is not None and all(op != o for _, o in keys):
            on = f" on host {host}" if host is not None else ""
            raise ConfigError(f"run {self.run_id} has no op {op!r}{on}")
        yield from (key for key in keys if op in (None, key[1]))

    def summary_json(self) -> dict[str, Any]:
        statuses = [h.status for h in self.hosts.values()]
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status.value,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "retry_of": self.retry_of,
            "hosts_total": len(statuses),
            "hosts_ok": sum(s is HostStatus.COMPLETE for s in statuses),
            "hosts_failed": sum(s is HostStatus.FAILED for s in statuses),
        }


# ---------------------------------------------------------------------------------------------
# The status algebra


def host_status_of(ops: Iterable[OpStatus]) -> HostStatus:
    """A finished host's status from its op statuses (&& semantics).

    FAILED when any op failed or timed out; else CANCELLED when any was cancelled; else
    COMPLETE when every op succeeded (or was skipped because an earlier run did it).
    """
    statuses = list(ops)
    if any(s.failed for s in statuses):
        return HostStatus.FAILED
    if any(s is OpStatus.CANCELLED for s in statuses):
        return HostStatus.CANCELLED
    if any(s in (OpStatus.PENDING, OpStatus.RUNNING) for s in statuses):
        return HostStatus.RUNNING
    return HostStatus.COMPLETE


def run_status_of(hosts: Iterable[HostStatus], *, cancelled: bool) -> RunStatus:
    """A finished run's status: CANCELLED when cancelled, else from its hosts."""
    if cancelled:
        return RunStatus.CANCELLED
    statuses = list(hosts)
    complete = sum(s is HostStatus.COMPLETE for s in statuses)
    if statuses and complete == len(statuses):
        return RunStatus.COMPLETE
    if complete == 0:
        return RunStatus.FAILED
    return RunStatus.PARTIAL


# ---------------------------------------------------------------------------------------------
# How a run is asked to go: `RunOptions` (mode, parallelism, max-fail, rollback, PR, selector).
#
# The CLI and the dashboard build them from their flags and fields, the executor follows them,
# and their JSON form is stored with the run (`Run.options`) so that a retry runs as the
# original did.


@dataclass(frozen=True)
class MaxFail:
    """`--max-fail N` or `--max-fail P%`: how many failed hosts are tolerated."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> MaxFail:
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if not 0 <= percent <= 100:
                    raise ValueError
                return cls(percent=percent)
            count = int(text)
            if count < 0:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise ConfigError(f"--max-fail: expected N or P% (got {text!r})") from None

    def exceeded(self, failed: int, total: int) -> bool:
        limit = self.count if self.count is not None else (self.percent or 0) * total / 100
        return failed > limit

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True)
class RunOptions:
    mode: Mode = Mode.LOCKSTEP
    max_parallel: int | None = None
    max_fail: MaxFail | None = None
    rollback_on_failure: bool = False
    pr: int | None = None
    selector: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "max_parallel": self.max_parallel,
            "max_fail": str(self.max_fail) if self.max_fail else None,
            "rollback_on_failure": self.rollback_on_failure,
            "pr": self.pr,
            "on": self.selector,
        }

    @classmethod
    def parse(
        cls,
        *,
        mode: str = Mode.LOCKSTEP.value,
        max_parallel: int | None = None,
        max_fail: str | int | None = None,
        rollback_on_failure: bool = False,
        pr: int | None = None,
        selector: str | None = None,
    ) -> RunOptions:
        """The one parser of options given as text: the CLI's flags, the dashboard's POST body
        and the stored JSON all come here. A bad max-fail is a ConfigError ("" included)."""
        return cls(
            mode=Mode(mode),
            max_parallel=max_parallel,
            max_fail=MaxFail.parse(str(max_fail)) if max_fail is not None else None,
            rollback_on_failure=rollback_on_failure,
            pr=pr,
            selector=selector,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunOptions:
        return cls.parse(
            mode=data.get("mode", Mode.LOCKSTEP.value),
            max_parallel=data.get("max_parallel"),
            max_fail=data.get("max_fail") or None,
            rollback_on_failure=bool(data.get("rollback_on_failure")),
            pr=data.get("pr"),
            selector=data.get("on"),
        )
