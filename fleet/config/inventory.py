"""fleet.toml -> Inventory: finding, reading and validating the file, and precedence.

Every value that can reach a remote shell, a path, a unit name or an SQL row is checked,
before anything runs, against a conservative alphabet by fleet.config.validate (and is
shell-quoted as well). An error is one line naming the file, the table and the key:

    fleet.toml: hosts.alpha.branch: invalid git branch name '-x' (must not start with '-')

A host's settings come from its table, then `[defaults]`, then fleet's built-in values. The
`[ssh]` table and how each host is dialled (user, port, identity files, where ~/.ssh/config
comes before the built-ins) are read by fleet.config.dialling; choosing hosts is
fleet.config.selection's.

The validators (`check_*`, `InvalidValue`) live in fleet.config.validate; this module re-exports
them.
Each TOML table is read through fleet.config.toml_table's `Table`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import platformdirs

from fleet.config.dialling import SSH_KEYS, host_dialling, read_ssh_settings
from fleet.config.sshconfig import SshConfig
from fleet.config.toml_table import Table, first_set
from fleet.config.validate import (
    check_address,
    check_branch,
    check_command,
    check_description,
    check_flake_attr,
    check_flake_attr_template,
    check_flake_input,
    check_git_email,
    check_git_name,
    check_local_path,
    check_op_id,
    check_pr_ref,
    check_remote,
    check_remote_path,
    check_tag,
    check_unit,
    check_user,
    show,
)
from fleet.errors import ConfigError
from fleet.models import (
    ControllerSettings,
    Detach,
    Host,
    Op,
    Pipeline,
    Scope,
    SshSettings,
)
from fleet.ops.builtin import TUNABLE, OpRegistry
from fleet.ops.pipelines import PipelineRegistry

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_SSH_CONFIG",
    "Inventory",
    "find_config",
    "load_inventory",
    "parse_inventory",
]

CONFIG_NAME = "fleet.toml"
DEFAULT_SSH_CONFIG = Path("~/.ssh/config")
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_RETRIES = 100


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
                raise ConfigError(f"cannot use config file {show(str(path))}: {cause}") from None
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
# Building the inventory

TOP_KEYS = ("ssh", "defaults", "controller", "hosts", "ops", "pipelines")
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
    top = Table(file, (), data, TOP_KEYS)
    defaults = _Settings.read(top.table("defaults", HOST_SETTINGS))
    ssh_settings = read_ssh_settings(top.table("ssh", SSH_KEYS))
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


def _controller(t: Table, defaults: _Settings, home: str) -> ControllerSettings:
    d = ControllerSettings()
    repo = first_set(t.string("repo", check_local_path), d.repo)
    if repo == "~" or repo.startswith("~/"):
        repo = home + repo[1:]
    return ControllerSettings(
        repo=repo,
        flake_input=first_set(t.string("flake_input", check_flake_input), d.flake_input),
        pr_ref=first_set(t.string("pr_ref", check_pr_ref), d.pr_ref),
        git_name=first_set(t.string("git_name", check_git_name), d.git_name),
        git_email=first_set(t.string("git_email", check_git_email), d.git_email),
        remote=first_set(t.string("remote", check_remote), defaults.remote, d.remote),
        branch=first_set(t.string("branch", check_branch), defaults.branch, d.branch),
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
    def read(cls, t: Table) -> _Settings:
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
    name: str, t: Table, defaults: _Settings, ssh: SshSettings, ssh_config: SshConfig | None
) -> Host:
    address = t.string("address", check_address)
    if address is None:
        raise t.error(None, "missing required key 'address'")
    own = _Settings.read(t)
    template = first_set(own.flake_attr, defaults.flake_attr, "{name}")
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
        repo=first_set(own.repo, defaults.repo, d.repo),
        remote=first_set(own.remote, defaults.remote, d.remote),
        branch=first_set(own.branch, defaults.branch, d.branch),
        sudo=first_set(own.sudo, defaults.sudo, d.sudo),
        flake_attr=attr,
        restart_units=first_set(own.restart_units, defaults.restart_units, d.restart_units),
        system_profile=first_set(own.system_profile, defaults.system_profile, d.system_profile),
        detach=first_set(own.detach, defaults.detach, d.detach),
        run_dir=first_set(own.run_dir, defaults.run_dir, d.run_dir),
        **host_dialling(t, address, own, defaults, ssh, ssh_config),
    )


def _ops(table: Table) -> OpRegistry:
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


def _op_tuning(t: Table) -> dict[str, object]:
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


def _user_op(op_id: str, t: Table) -> Op:
    command = t.string("command", check_command)
    if command is None:
        raise t.error(None, "missing required key 'command' (a new op needs one)")
    d = Op(op_id, "")
    return Op(
        op_id,
        description=first_set(t.string("description", check_description), ""),
        scope=first_set(t.choice("scope", Scope), d.scope),
        timeout=first_set(t.seconds("timeout"), d.timeout),
        warn_after=t.seconds("warn_after"),
        retries=first_set(t.integer("retries", 0, MAX_RETRIES), d.retries),
        command=command,
        builtin=False,
    )


def _pipelines(table: Table, ops: OpRegistry) -> PipelineRegistry:
    registry = PipelineRegistry.with_builtins(ops)
    for pipeline_id in table.names():
        table.check_name(pipeline_id, "pipeline", [p.id for p in registry])
        t = table.table(pipeline_id, PIPELINE_KEYS)
        if pipeline_id in registry:
            raise t.error(None, f"{show(pipeline_id)} is a built-in pipeline; choose another id")
        op_ids = t.strings("ops", check_op_id)
        if op_ids is None:
            raise t.error(None, "missing required key 'ops'")
        description = first_set(t.string("description", check_description), "")
        with t.registry_errors():
            registry.register(Pipeline(pipeline_id, op_ids, description))
    return registry
