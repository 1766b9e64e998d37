"""fleet.toml -> Inventory: the schema, validation, precedence and ~/.ssh/config.

Every value that can reach a remote shell, a path, a unit name or an SQL row is checked here,
before anything runs, against a conservative alphabet (and is shell-quoted as well). An error
is one line naming the file, the table and the key:

    fleet.toml: hosts.alpha.branch: invalid git branch name '-x' (must not start with '-')

How a host is dialled (user, port, identity files) comes from, in order: the host's table,
then `[defaults]`, then ~/.ssh/config matched on the host's `address` (which may be an alias
with HostName, User, Port, IdentityFile, ProxyJump), then fleet's built-in values.

The validators (`check_*`) raise `InvalidValue` (a ValueError) with a one-line reason; they
are public so that the CLI can check values given on the command line the same way.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TypedDict, TypeVar

import platformdirs

from fleet.errors import ConfigError, HostSelectionError
from fleet.models import (
    ControllerSettings,
    Detach,
    Host,
    HostKeyPolicy,
    Op,
    Pipeline,
    Scope,
    SshSettings,
    is_valid_name,
)
from fleet.ops import TUNABLE, OpRegistry
from fleet.pipelines import PipelineRegistry
from fleet.sshconfig import SshConfig, SshConfigEntry

CONFIG_NAME = "fleet.toml"
DEFAULT_SSH_CONFIG = Path("~/.ssh/config")
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_SECONDS = 7 * 24 * 3600.0
MAX_RETRIES = 100

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")


@dataclass(frozen=True)
class Inventory:
    """Everything fleet.toml says, validated and resolved."""

    path: Path | None
    ssh: SshSettings
    controller: ControllerSettings
    hosts: Mapping[str, Host]  # in file order
    ops: OpRegistry
    pipelines: PipelineRegistry


# ---------------------------------------------------------------------------------------------
# Finding, loading and parsing


def find_config(
    explicit: str | None, env: Mapping[str, str] = os.environ, cwd: Path | None = None
) -> Path:
    """`--config PATH`, else $FLEET_CONFIG, else ./fleet.toml, else the user config dir's."""
    cwd = cwd if cwd is not None else Path.cwd()
    for given, origin in ((explicit, "--config"), (env.get("FLEET_CONFIG"), "$FLEET_CONFIG")):
        if given:
            path = cwd / Path(given).expanduser()
            try:
                found = path.exists()
            except OSError as exc:  # e.g. a file name too long
                cause = (exc.strerror or str(exc)).lower()
                raise ConfigError(f"cannot use config file {_show(str(path))}: {cause}") from None
            if not found:
                raise ConfigError(f"config file not found: {path} (from {origin})")
            return path
    looked = [cwd / CONFIG_NAME, platformdirs.user_config_path("fleet") / CONFIG_NAME]
    for path in looked:
        if path.exists():
            return path
    raise ConfigError(
        "no config file found (looked for --config, $FLEET_CONFIG, "
        + ", ".join(str(p) for p in looked)
        + ")"
    )


def load_inventory(
    path: Path,
    *,
    ssh_config: Path | None = DEFAULT_SSH_CONFIG,
    env: Mapping[str, str] = os.environ,
) -> Inventory:
    """Read and validate a fleet.toml; `ssh_config=None` ignores ~/.ssh/config."""
    file = str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("config file not found", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=file) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"too large (over {MAX_CONFIG_BYTES} bytes)", file=file)
    try:
        text = data.decode("utf-8-sig")  # tolerate a byte order mark
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"line {line}: not valid UTF-8", file=file) from None
    home = env.get("HOME") or os.path.expanduser("~")
    ssh = None
    if ssh_config is not None:
        ssh_path = _expand_home(ssh_config, home)
        ssh = SshConfig.load(ssh_path, home=home, ssh_dir=Path(home, ".ssh"))
    return _build(_parse_toml(text, file), file, path, ssh, home)


def parse_inventory(
    text: str, *, path: str = CONFIG_NAME, ssh_config_text: str | None = None
) -> Inventory:
    """Validate fleet.toml text (`path` names it in errors); for tests and `fleet check`."""
    home = os.path.expanduser("~")
    ssh = None
    if ssh_config_text is not None:
        ssh = SshConfig.parse(ssh_config_text, source="ssh config", home=home)
    return _build(_parse_toml(text, path), path, None, ssh, home)


END = " (at end of document)"


def _parse_toml(text: str, file: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = " ".join(str(exc).split())
        match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message)
        if match:
            reason, line, column = match.groups()
            message = f"line {line}: TOML syntax error: {reason} (column {column})"
        elif message.endswith(END):
            line = str(text.count("\n") + 1)
            message = f"line {line}: TOML syntax error: {message.removesuffix(END)} (at the end)"
        else:
            message = f"TOML syntax error: {message}"
        raise ConfigError(message, file=file) from None
    except RecursionError:
        raise ConfigError("TOML syntax error: values nested too deeply", file=file) from None


def _expand_home(path: Path, home: str) -> Path:
    if path.parts and path.parts[0] == "~":
        return Path(home, *path.parts[1:])
    return path


# ---------------------------------------------------------------------------------------------
# Selecting hosts


def select_hosts(inventory: Inventory, selector: str | None) -> list[Host]:
    """Hosts matching a comma list of names, globs (`web-*`) and tags (`@eu`), in file order.

    None selects every host. An item that matches nothing (an unknown name, a glob or tag
    without hosts) is an error, so that a typo never silently deploys fewer hosts.
    """
    hosts = list(inventory.hosts.values())
    if selector is None:
        return hosts
    items = [item.strip() for item in selector.split(",")]
    if not any(items):
        raise HostSelectionError("empty host selector (give names, globs or @tags)")
    chosen: set[str] = set()
    for item in items:
        if not item:
            raise HostSelectionError(f"empty item in host selector {_show(selector)}")
        if item.startswith("@"):
            matched = {h.name for h in hosts if item[1:] in h.tags}
            known = sorted({"@" + t for h in hosts for t in h.tags})
            what = "tags"
        else:
            matched = {h.name for h in hosts if fnmatch.fnmatchcase(h.name, item)}
            known, what = [h.name for h in hosts], "hosts"
        if not matched:
            raise HostSelectionError(
                f"no host matches {_show(item)} ({what}: {_short_list(known)})"
            )
        chosen |= matched
    return [h for h in hosts if h.name in chosen]


def _short_list(names: Sequence[str], limit: int = 20) -> str:
    if not names:
        return "none"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---------------------------------------------------------------------------------------------
# Building the inventory

TOP_KEYS = ("ssh", "defaults", "controller", "hosts", "ops", "pipelines")
SSH_KEYS = ("identity_file", "known_hosts", "host_key_policy", "connect_timeout",
            "keepalive_interval")  # fmt: skip
HOST_SETTINGS = ("user", "port", "repo", "remote", "branch", "sudo", "flake_attr",
                 "restart_units", "system_profile", "detach", "run_dir",
                 "identity_file")  # fmt: skip
HOST_KEYS = ("address", "tags", *HOST_SETTINGS)
CONTROLLER_KEYS = ("repo", "flake_input", "pr_ref", "git_name", "git_email", "remote", "branch")
OP_KEYS = ("command", "description", "scope", "timeout", "warn_after", "retries")
PIPELINE_KEYS = ("ops", "description")


def _build(
    data: Mapping[str, object], file: str, path: Path | None, ssh: SshConfig | None, home: str
) -> Inventory:
    top = _Table(file, (), data, TOP_KEYS)
    defaults = _Settings.read(top.table("defaults", HOST_SETTINGS))
    ssh_settings = _ssh_settings(top.table("ssh", SSH_KEYS))
    controller = _controller(top.table("controller", CONTROLLER_KEYS), defaults, home)
    hosts_table = top.table("hosts", None)
    hosts: dict[str, Host] = {}
    for name in hosts_table.names():
        hosts_table.check_name(name, "host", hosts)
        table = hosts_table.table(name, HOST_KEYS)
        hosts[name] = _host(name, table, defaults, ssh_settings, ssh)
    ops = _ops(top.table("ops", None))
    pipelines = _pipelines(top.table("pipelines", None), ops)
    return Inventory(path, ssh_settings, controller, MappingProxyType(hosts), ops, pipelines)


def _ssh_settings(t: _Table) -> SshSettings:
    default = SshSettings()
    known_hosts = t.strings("known_hosts", check_local_path, single_ok=True)
    if known_hosts == ():
        raise t.error("known_hosts", "needs at least one file")
    return SshSettings(
        identity_file=t.string("identity_file", check_local_path),
        known_hosts=default.known_hosts if known_hosts is None else known_hosts,
        host_key_policy=_or(t.choice("host_key_policy", HostKeyPolicy), default.host_key_policy),
        connect_timeout=_or(t.seconds("connect_timeout"), default.connect_timeout),
        keepalive_interval=_or(
            t.seconds("keepalive_interval", zero_ok=True), default.keepalive_interval
        ),
    )


def _controller(t: _Table, defaults: _Settings, home: str) -> ControllerSettings:
    d = ControllerSettings()
    repo = _or(t.string("repo", check_local_path), d.repo)
    if repo == "~" or repo.startswith("~/"):
        repo = home + repo[1:]
    return ControllerSettings(
        repo=repo,
        flake_input=_or(t.string("flake_input", check_flake_input), d.flake_input),
        pr_ref=_or(t.string("pr_ref", check_pr_ref), d.pr_ref),
        git_name=_or(t.string("git_name", check_git_name), d.git_name),
        git_email=_or(t.string("git_email", check_git_email), d.git_email),
        remote=_or(t.string("remote", check_remote), defaults.remote, d.remote),
        branch=_or(t.string("branch", check_branch), defaults.branch, d.branch),
    )


@dataclass(frozen=True)
class _Settings:
    """The host settings one table sets explicitly (None: not set there)."""

    user: str | None = None
    port: int | None = None
    repo: str | None = None
    remote: str | None = None
    branch: str | None = None
    sudo: bool | None = None
    flake_attr: str | None = None
    restart_units: tuple[str, ...] | None = None
    system_profile: str | None = None
    detach: Detach | None = None
    run_dir: str | None = None
    identity_file: str | None = None

    @classmethod
    def read(cls, t: _Table) -> _Settings:
        return cls(
            user=t.string("user", check_user),
            port=t.integer("port", 1, 65535),
            repo=t.string("repo", check_remote_path),
            remote=t.string("remote", check_remote),
            branch=t.string("branch", check_branch),
            sudo=t.boolean("sudo"),
            flake_attr=t.string("flake_attr", check_flake_attr_template),
            restart_units=t.strings("restart_units", check_unit),
            system_profile=t.string("system_profile", check_remote_path),
            detach=t.choice("detach", Detach),
            run_dir=t.string("run_dir", check_remote_path),
            identity_file=t.string("identity_file", check_local_path),
        )


def _host(
    name: str, t: _Table, defaults: _Settings, ssh: SshSettings, ssh_config: SshConfig | None
) -> Host:
    address = t.string("address", check_address)
    if address is None:
        raise t.error(None, "missing required key 'address'")
    own = _Settings.read(t)
    template = _or(own.flake_attr, defaults.flake_attr, "{name}")
    attr = template.replace("{name}", name)
    try:
        check_flake_attr(attr)
    except ValueError as exc:
        raise t.error("flake_attr", f"{exc}; set flake_attr for this host") from None
    d = Host(name=name, address=address, hostname=address)
    return Host(
        name=name,
        address=address,
        tags=tuple(dict.fromkeys(t.strings("tags", check_tag) or ())),
        repo=_or(own.repo, defaults.repo, d.repo),
        remote=_or(own.remote, defaults.remote, d.remote),
        branch=_or(own.branch, defaults.branch, d.branch),
        sudo=_or(own.sudo, defaults.sudo, d.sudo),
        flake_attr=attr,
        restart_units=_or(own.restart_units, defaults.restart_units, d.restart_units),
        system_profile=_or(own.system_profile, defaults.system_profile, d.system_profile),
        detach=_or(own.detach, defaults.detach, d.detach),
        run_dir=_or(own.run_dir, defaults.run_dir, d.run_dir),
        **_dialling(t, address, own, defaults, ssh, ssh_config),
    )


class _Dialling(TypedDict):
    hostname: str
    user: str
    port: int
    identity_files: tuple[str, ...]
    proxy_jump: str | None


def _dialling(
    t: _Table,
    address: str,
    own: _Settings,
    defaults: _Settings,
    ssh: SshSettings,
    ssh_config: SshConfig | None,
) -> _Dialling:
    """How a host is dialled: its table, then [defaults], then ~/.ssh/config, then built-ins."""
    entry = ssh_config.resolve(address) if ssh_config else SshConfigEntry()

    def checked(key: str, value: str, check: Callable[[str], None]) -> str:
        try:
            check(value)
        except ValueError as exc:
            where = f"{entry.source}, for {_show(address)}"
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
    return _Dialling(
        hostname=checked("address", hostname, check_address) if hostname else address,
        user=_or(user, "root"),
        port=_or(own.port, defaults.port, entry.port, 22),
        identity_files=tuple(dict.fromkeys(identity_files)),
        proxy_jump=checked("address", proxy, check_proxy_jump) if proxy else None,
    )


def _ops(table: _Table) -> OpRegistry:
    registry = OpRegistry.with_builtins()
    for op_id in table.names():
        table.check_name(op_id, "op", [op.id for op in registry])
        t = table.table(op_id, OP_KEYS)
        with t.registry_errors():
            if op_id in registry:
                registry.tune(op_id, **_op_tuning(t))
            else:
                registry.register(_user_op(op_id, t))
    return registry


def _op_tuning(t: _Table) -> dict[str, object]:
    """What [ops.ID] changes in a built-in op."""
    for key in ("command", "scope"):
        if key in t:
            raise t.error(key, f"a built-in op may change only {', '.join(TUNABLE)}")
    tuning = {
        "description": t.string("description", check_description),
        "timeout": t.seconds("timeout"),
        "warn_after": t.seconds("warn_after"),
        "retries": t.integer("retries", 0, MAX_RETRIES),
    }
    return {k: v for k, v in tuning.items() if v is not None}


def _user_op(op_id: str, t: _Table) -> Op:
    command = t.string("command", check_command)
    if command is None:
        raise t.error(None, "missing required key 'command' (a new op needs one)")
    d = Op(op_id, "")
    return Op(
        op_id,
        description=_or(t.string("description", check_description), ""),
        scope=_or(t.choice("scope", Scope), d.scope),
        timeout=_or(t.seconds("timeout"), d.timeout),
        warn_after=t.seconds("warn_after"),
        retries=_or(t.integer("retries", 0, MAX_RETRIES), d.retries),
        command=command,
        builtin=False,
    )


def _pipelines(table: _Table, ops: OpRegistry) -> PipelineRegistry:
    registry = PipelineRegistry.with_builtins(ops)
    for pipeline_id in table.names():
        table.check_name(pipeline_id, "pipeline", [p.id for p in registry])
        t = table.table(pipeline_id, PIPELINE_KEYS)
        if pipeline_id in registry:
            raise t.error(None, f"{_show(pipeline_id)} is a built-in pipeline; choose another id")
        op_ids = t.strings("ops", check_op_id)
        if op_ids is None:
            raise t.error(None, "missing required key 'ops'")
        description = _or(t.string("description", check_description), "")
        with t.registry_errors():
            registry.register(Pipeline(pipeline_id, op_ids, description))
    return registry


# ---------------------------------------------------------------------------------------------
# Reading TOML tables

BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Table:
    """One TOML table being read: knows its place, refuses unknown keys, reads typed values.

    Each reader returns None when the key is absent, so that callers know what was set
    explicitly (for precedence) and what is left to a default.
    """

    def __init__(
        self,
        file: str,
        path: tuple[str, ...],
        data: Mapping[str, object],
        allowed: Collection[str] | None,
    ) -> None:
        self.file, self.path, self.data = file, path, data
        for key in data:
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.error(key, f"unknown key ({hint}allowed: {', '.join(allowed)})")

    def names(self) -> list[str]:
        """The keys of a table of named tables ([hosts], [ops], [pipelines]), in file order."""
        return list(self.data)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def where(self, key: str | None = None, index: int | None = None) -> str:
        parts = (*self.path, key) if key is not None else self.path
        path = ".".join(p if BARE_KEY_RE.fullmatch(p) else _quote_key(p) for p in parts)
        return path if index is None else f"{path}[{index}]"

    def error(self, key: str | None, reason: str, index: int | None = None) -> ConfigError:
        where = self.where(key, index)
        message = f"{where}: {reason}" if where else reason
        return ConfigError(message, file=self.file, key=where or None)

    @contextlib.contextmanager
    def registry_errors(self) -> Iterator[None]:
        """Name the file in the errors the op and pipeline registries raise."""
        try:
            yield
        except ConfigError as exc:
            if exc.file is not None:
                raise
            raise ConfigError(str(exc), file=self.file, key=exc.key) from None

    def check_name(self, name: str, what: str, existing: Collection[str]) -> None:
        """A host, op or pipeline id: a valid name, not differing from another only in case."""
        if not is_valid_name(name):
            raise self.error(name, f"invalid {what} name ({NAME_RULE})")
        if what == "host" and name == "controller":
            raise self.error(name, "'controller' is reserved for the controller's own ops")
        for other in existing:
            if other != name and other.lower() == name.lower():
                raise self.error(name, f"{what} name differs from {other!r} only in case")

    def table(self, key: str, allowed: Collection[str] | None) -> _Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, _expected("a table", value))
        return _Table(self.file, (*self.path, key), value, allowed)

    def string(self, key: str, check: Callable[[str], None]) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, _expected("a string", value))
        self._check(key, value, check)
        return value

    def strings(
        self, key: str, check: Callable[[str], None], *, single_ok: bool = False
    ) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if single_ok and isinstance(value, str):
            self._check(key, value, check)
            return (value,)
        if not isinstance(value, list):
            what = "a string or an array of strings" if single_ok else "an array of strings"
            raise self.error(key, _expected(what, value))
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(key, _expected("a string", item), index=i)
            self._check(key, item, check, index=i)
        return tuple(value)

    def seconds(self, key: str, *, zero_ok: bool = False) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, _expected("a number of seconds", value))
        low = ">= 0" if zero_ok else "> 0"
        if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
            raise self.error(key, f"must be a number of seconds {low}, got {value}")
        if value > MAX_SECONDS:
            raise self.error(key, f"must be at most {MAX_SECONDS:.0f} seconds (7 days)")
        return float(value)

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, _expected("an integer", value))
        if not low <= value <= high:
            shown = value if abs(value) < 10**12 else "a huge number"
            raise self.error(key, f"must be between {low} and {high}, got {shown}")
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.error(key, _expected("true or false", value))
        return value

    def choice(self, key: str, enum: type[E]) -> E | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, _expected("a string", value))
        choices = [e.value for e in enum]
        if value not in choices:
            raise self.error(key, f"invalid value {_show(value)} (one of: {', '.join(choices)})")
        return enum(value)

    def _check(
        self, key: str, value: str, check: Callable[[str], None], index: int | None = None
    ) -> None:
        try:
            check(value)
        except ValueError as exc:
            raise self.error(key, str(exc), index) from None


def _expected(what: str, value: object) -> str:
    return f"expected {what}, got {_type_name(value)}"


def _type_name(value: object) -> str:
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
        (list, "array"), (dict, "table"), (datetime, "datetime"), (date, "date"), (time, "time"),
    )  # fmt: skip
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


def _quote_key(part: str) -> str:
    return json.dumps(part if len(part) <= 64 else part[:40] + "...")


def _show(value: str) -> str:
    """A value for an error message: quoted, escaped to one line, shortened."""
    if len(value) <= 64:
        return repr(value)
    return f"{value[:40]!r}... ({len(value)} characters)"


def _or(*values: T | None) -> T:
    """The first value that is set (the last one is the built-in default)."""
    for value in values:
        if value is not None:
            return value
    raise AssertionError("no default given")


# ---------------------------------------------------------------------------------------------
# Validators: each raises InvalidValue with a one-line reason


class InvalidValue(ValueError):
    """A value a validator refuses: what it is, the value, and why (one line)."""

    def __init__(self, what: str, value: str, why: str) -> None:
        self.what, self.value, self.why = what, value, why
        super().__init__(f"invalid {what} {_show(value)} ({why})")


@dataclass(frozen=True)
class _Alphabet:
    """A value restricted to a pattern of ASCII characters and a length."""

    what: str
    pattern: re.Pattern[str]
    why: str
    max_len: int

    def check(self, value: str) -> None:
        if len(value) > self.max_len:
            raise InvalidValue(self.what, value, f"longer than {self.max_len} characters")
        if value.startswith("-"):
            raise InvalidValue(self.what, value, "must not start with '-'")
        if not self.pattern.fullmatch(value):
            raise InvalidValue(self.what, value, self.why)


NAME_RULE = "letters, digits, _ . -, at most 63 characters, not starting with '-' or '.'"
ADDRESS = _Alphabet(
    "address",
    re.compile(r"[A-Za-z0-9_:][A-Za-z0-9._:-]*"),
    "a host name, IP address or ssh alias: letters, digits, . _ : -",
    253,
)
USER = _Alphabet(  # POSIX portable names; upper case is harmless (macOS, directory users)
    "user name",
    re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*"),
    "letters, digits, _ . -, not starting with a digit",
    32,
)
LOCAL_PATH = _Alphabet(
    "path",
    re.compile(r"(?:/|~/|~$)[A-Za-z0-9._+,@%=/-]*"),
    "an absolute or ~/ path of letters, digits and . _ + , @ % = / -",
    4096,
)
REMOTE_PATH = _Alphabet(
    "path",
    re.compile(r"/[A-Za-z0-9._+,@%=/-]*"),
    "an absolute path of letters, digits and . _ + , @ % = / -",
    4096,
)
REF = _Alphabet(
    "git ref",
    re.compile(r"[A-Za-z0-9._/-]+"),
    "letters, digits and . _ / -",
    255,
)
REMOTE = _Alphabet(
    "git remote name",
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*"),
    "a remote's name: letters, digits, . _ -",
    255,
)
FLAKE_ATTR = _Alphabet(
    "flake attribute",
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*"),
    "letters, digits, _ . -, not starting with '.'",
    255,
)
FLAKE_INPUT = _Alphabet(
    "flake input name",
    re.compile(r"[A-Za-z_][A-Za-z0-9_-]*"),
    "a Nix identifier: letters, digits, _ -, not starting with a digit",
    63,
)
UNIT = _Alphabet(
    "systemd unit name",
    re.compile(r"[A-Za-z0-9:_@\\][A-Za-z0-9:_.@\\-]*\.(?:service|socket|target|timer|path|mount)"),
    "letters, digits, : _ . @ \\ -, ending in .service, .socket, .target, .timer, .path or .mount",
    255,
)
EMAIL = _Alphabet(
    "git email",
    re.compile(r"[A-Za-z0-9._+][A-Za-z0-9._+-]*@[A-Za-z0-9][A-Za-z0-9.-]*"),
    "user@host of letters, digits, . _ + -",
    254,
)
HOP_RE = re.compile(
    r"(?:ssh://)?(?:(?P<user>[^@]*)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\[\]]+)(?::(?P<port>[0-9]{1,5}))?"
)


def check_address(value: str) -> None:
    ADDRESS.check(value)


def check_user(value: str) -> None:
    USER.check(value)


def check_remote_path(value: str) -> None:
    """An absolute path on a host (repo, system_profile, run_dir); `~` is not expanded there."""
    if value.startswith("~"):
        raise InvalidValue("path", value, "must be absolute: '~' is not expanded on the host")
    REMOTE_PATH.check(value)
    _check_components(value)


def check_local_path(value: str) -> None:
    """An absolute or ~/ path on the controller (identity files, known_hosts, controller repo)."""
    LOCAL_PATH.check(value)
    _check_components(value)


def _check_components(value: str) -> None:
    if "/../" in f"/{value}/" or "/./" in f"/{value}/":
        raise InvalidValue("path", value, "must not contain '.' or '..' components")


def check_git_ref_rules(value: str, what: str) -> None:
    """The rules of git check-ref-format, within the REF alphabet."""
    REF.check(value)
    parts = value.split("/")
    if ".." in value:
        raise InvalidValue(what, value, "must not contain '..'")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise InvalidValue(what, value, "must not start or end with '/' or contain '//'")
    if value.endswith(".") or any(p.startswith(".") or p.endswith(".lock") for p in parts):
        raise InvalidValue(what, value, "no part may start with '.' or end with '.lock' or '.'")


def check_branch(value: str) -> None:
    try:
        check_git_ref_rules(value, "git branch name")
    except InvalidValue as exc:
        raise InvalidValue("git branch name", value, exc.why) from None
    if value == "HEAD":
        raise InvalidValue("git branch name", value, "HEAD is not a branch")


def check_remote(value: str) -> None:
    REMOTE.check(value)
    if ".." in value or value.endswith((".lock", ".")):
        raise InvalidValue(
            "git remote name", value, "must not contain '..' or end with '.lock' or '.'"
        )


def check_pr_ref(value: str) -> None:
    """A ref with a `{pr}` placeholder, e.g. refs/pull/{pr}/head."""
    if "{pr}" not in value or "{" in value.replace("{pr}", "") or "}" in value.replace("{pr}", ""):
        raise InvalidValue("pr_ref", value, "must contain {pr} and no other placeholder")
    try:
        check_git_ref_rules(value.replace("{pr}", "1"), "pr_ref")
    except InvalidValue as exc:
        raise InvalidValue("pr_ref", value, exc.why) from None


def check_flake_attr(value: str) -> None:
    FLAKE_ATTR.check(value)
    if ".." in value:
        raise InvalidValue("flake attribute", value, "must not contain '..'")


def check_flake_attr_template(value: str) -> None:
    """A flake attribute in which `{name}` stands for the host's name."""
    rest = value.replace("{name}", "")
    if "{" in rest or "}" in rest:
        raise InvalidValue("flake_attr", value, "the only placeholder allowed is {name}")
    try:
        check_flake_attr(value.replace("{name}", "name"))
    except InvalidValue as exc:
        raise InvalidValue("flake_attr", value, exc.why) from None


def check_flake_input(value: str) -> None:
    FLAKE_INPUT.check(value)


def check_unit(value: str) -> None:
    UNIT.check(value)


def check_tag(value: str) -> None:
    if not is_valid_name(value):
        raise InvalidValue("tag", value, NAME_RULE)


def check_op_id(value: str) -> None:
    if not is_valid_name(value):
        raise InvalidValue("op id", value, NAME_RULE)


def check_git_email(value: str) -> None:
    EMAIL.check(value)


def check_proxy_jump(value: str) -> None:
    """OpenSSH's ProxyJump: `[ssh://][user@]host[:port]` hops separated by commas."""
    if len(value) > 1024:
        raise InvalidValue("ProxyJump", value, "longer than 1024 characters")
    for hop in value.split(","):
        match = HOP_RE.fullmatch(hop)
        if not match:
            raise InvalidValue("ProxyJump", value, f"{hop!r} is not [user@]host[:port]")
        user, host, port = match.group("user", "host", "port")
        try:
            if user is not None:
                USER.check(user)
            ADDRESS.check(host.strip("[]"))
        except InvalidValue as exc:
            raise InvalidValue("ProxyJump", value, f"{exc.what} {exc.value!r}: {exc.why}") from None
        if port is not None and not 1 <= int(port) <= 65535:
            raise InvalidValue("ProxyJump", value, f"port {port} is not 1..65535")


def check_git_name(value: str) -> None:
    """Free text (any script), one line, not empty, not starting with '-'."""
    _check_text("git name", value, 255)
    if not value.strip() or value.startswith("-"):
        raise InvalidValue("git name", value, "must not be empty or start with '-'")


def check_description(value: str) -> None:
    _check_text("description", value, 1024)


def check_command(value: str) -> None:
    """A user op's shell command: free text, several lines allowed."""
    _check_text("command", value, 4096, multiline=True)
    if not value.strip():
        raise InvalidValue("command", value, "must not be empty")


def _check_text(what: str, value: str, max_len: int, *, multiline: bool = False) -> None:
    if len(value) > max_len:
        raise InvalidValue(what, value, f"longer than {max_len} characters")
    allowed_controls = "\n\t" if multiline else ""
    if not all(c.isprintable() or c in allowed_controls for c in value):
        kind = "control characters" if multiline else "line breaks or control characters"
        raise InvalidValue(what, value, f"must not contain {kind}")
