"""fleet.toml -> Inventory: schema, defaults, precedence, validation, errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from fleet.config.inventory import Inventory, find_config, load_inventory, parse_inventory
from fleet.config.validate import InvalidValue, check_branch, check_user
from fleet.errors import ConfigError
from fleet.models import (
    ControllerSettings,
    Detach,
    Host,
    HostKeyPolicy,
    Scope,
    SshSettings,
)

HOME = os.path.expanduser("~")

FULL_EXAMPLE = """\
[ssh]
identity_file = "~/.ssh/fleet_ed25519"
known_hosts = ["~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts", "/var/lib/fleet/known_hosts"]
host_key_policy = "accept-new"
connect_timeout = 7.5
keepalive_interval = 30

[defaults]
user = "deploy"
port = 22
repo = "/etc/nixos"
remote = "origin"
branch = "main"
sudo = true
flake_attr = "{name}"
restart_units = ["fleet.service"]
system_profile = "/run/current-system"
detach = "systemd-run"
run_dir = "/run/fleet"

[controller]
repo = "~/src/nixcfg"
flake_input = "fleet"
pr_ref = "refs/pull/{pr}/head"
git_name = "Fleet Bot"
git_email = "fleet@example.org"
remote = "upstream"
branch = "production"

[hosts.alpha]
address = "alpha.example.org"
tags = ["eu", "web"]

[hosts.beta]
address = "10.0.0.2"
tags = ["eu", "db"]
user = "root"
port = 2222
branch = "staging"
sudo = false
flake_attr = "{name}-db"
restart_units = ["fleet.service", "postgresql.service"]
detach = "setsid"
identity_file = "~/.ssh/beta"

[hosts.gamma]
address = "fd00::3"
tags = ["us"]
repo = "/srv/nixcfg"
remote = "github"
system_profile = "/nix/var/nix/profiles/system"
run_dir = "/var/run/fleet"

[ops.switch]
timeout = 1800
warn_after = 600
retries = 1
description = "Switch, with a shorter timeout"

[ops.disk-space]
command = "df -h {repo} && echo {name}"
description = "Show free space"
scope = "host"
timeout = 60
warn_after = 30
retries = 2

[ops.notify]
command = "echo deployed"
scope = "controller"

[pipelines.deploy-check]
ops = ["pull", "switch", "test", "disk-space"]
description = "Deploy and show disk space"

[pipelines.announce]
ops = ["notify"]
"""


def parse(text: str, ssh_config_text: str | None = None) -> Inventory:
    return parse_inventory(text, ssh_config_text=ssh_config_text)


def error_of(text: str, ssh_config_text: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, ssh_config_text)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith("fleet.toml: ")
    return message


# ---------------------------------------------------------------------------------------------
# The full example and the defaults


def test_full_example() -> None:
    inv = parse(FULL_EXAMPLE)
    assert inv.path is None
    assert inv.ssh == SshSettings(
        identity_file="~/.ssh/fleet_ed25519",
        known_hosts=(
            "~/.ssh/known_hosts",
            "/etc/ssh/ssh_known_hosts",
            "/var/lib/fleet/known_hosts",
        ),
        host_key_policy=HostKeyPolicy.ACCEPT_NEW,
        connect_timeout=7.5,
        keepalive_interval=30.0,
    )
    assert inv.controller == ControllerSettings(
        repo=f"{HOME}/src/nixcfg",
        flake_input="fleet",
        pr_ref="refs/pull/{pr}/head",
        git_name="Fleet Bot",
        git_email="fleet@example.org",
        remote="upstream",
        branch="production",
    )
    assert list(inv.hosts) == ["alpha", "beta", "gamma"]
    assert inv.hosts["alpha"] == Host(
        name="alpha",
        address="alpha.example.org",
        hostname="alpha.example.org",
        user="deploy",
        tags=("eu", "web"),
        sudo=True,
        flake_attr="alpha",
        detach=Detach.SYSTEMD_RUN,
        identity_files=("~/.ssh/fleet_ed25519",),
    )
    assert inv.hosts["beta"] == Host(
        name="beta",
        address="10.0.0.2",
        hostname="10.0.0.2",
        port=2222,
        user="root",
        tags=("eu", "db"),
        branch="staging",
        sudo=False,
        flake_attr="beta-db",
        restart_units=("fleet.service", "postgresql.service"),
        detach=Detach.SETSID,
        identity_files=("~/.ssh/beta", "~/.ssh/fleet_ed25519"),
    )
    gamma = inv.hosts["gamma"]
    assert (gamma.hostname, gamma.repo, gamma.remote) == ("fd00::3", "/srv/nixcfg", "github")
    assert (gamma.system_profile, gamma.run_dir) == (
        "/nix/var/nix/profiles/system",
        "/var/run/fleet",
    )

    switch = inv.ops.get("switch")
    assert (switch.timeout, switch.warn_after, switch.retries) == (1800.0, 600.0, 1)
    assert switch.description == "Switch, with a shorter timeout"
    assert switch.builtin and switch.switch_like and switch.command is None
    disk = inv.ops.get("disk-space")
    assert disk.command == "df -h {repo} && echo {name}"
    assert (disk.scope, disk.timeout, disk.warn_after, disk.retries) == (Scope.HOST, 60, 30, 2)
    assert not disk.builtin
    assert inv.ops.get("notify").scope is Scope.CONTROLLER
    assert inv.pipelines.get("deploy-check").ops == ("pull", "switch", "test", "disk-space")
    assert inv.pipelines.get("announce").description == ""
    assert "do-all" in inv.pipelines


def test_minimal_config_takes_every_default() -> None:
    inv = parse('[hosts.alpha]\naddress = "alpha"\n')
    assert inv.ssh == SshSettings()
    assert inv.controller == ControllerSettings(repo=f"{HOME}/src/nixcfg")
    assert inv.hosts == {
        "alpha": Host(
            name="alpha",
            address="alpha",
            hostname="alpha",
            port=22,
            user="root",
            tags=(),
            repo="/etc/nixos",
            remote="origin",
            branch="main",
            sudo=False,
            flake_attr="alpha",
            restart_units=("fleet.service",),
            system_profile="/run/current-system",
            detach=Detach.AUTO,
            run_dir="/run/fleet",
            identity_files=(),
            proxy_jump=None,
        )
    }
    assert [op.id for op in inv.ops] == [
        "pull", "switch", "test", "rollback", "restart", "force-rebuild", "merge-pr", "bump-flake",
    ]  # fmt: skip
    assert [p.id for p in inv.pipelines] == [
        "do-all",
        "merge-deploy",
        "update-agent",
        "force-update",
    ]


def test_empty_config_has_no_hosts() -> None:
    assert dict(parse("").hosts) == {}


# (key, TOML value, the Host attribute and the value it gets)
HOST_SETTINGS: list[tuple[str, str, str, object]] = [
    ("user", '"deploy"', "user", "deploy"),
    ("port", "2222", "port", 2222),
    ("repo", '"/srv/nixcfg"', "repo", "/srv/nixcfg"),
    ("remote", '"upstream"', "remote", "upstream"),
    ("branch", '"release/24.05"', "branch", "release/24.05"),
    ("sudo", "true", "sudo", True),
    ("flake_attr", '"{name}-x"', "flake_attr", "alpha-x"),
    ("restart_units", '["a.service", "b@c.timer"]', "restart_units", ("a.service", "b@c.timer")),
    ("restart_units", "[]", "restart_units", ()),
    ("system_profile", '"/nix/profiles/system"', "system_profile", "/nix/profiles/system"),
    ("detach", '"setsid"', "detach", Detach.SETSID),
    ("run_dir", '"/var/run/fleet"', "run_dir", "/var/run/fleet"),
    ("identity_file", '"~/.ssh/k"', "identity_files", ("~/.ssh/k",)),
]  # fmt: skip


@pytest.mark.parametrize(("key", "toml", "attr", "expected"), HOST_SETTINGS)
def test_defaults_apply_to_hosts(key: str, toml: str, attr: str, expected: object) -> None:
    inv = parse(f'[defaults]\n{key} = {toml}\n[hosts.alpha]\naddress = "a"\n')
    assert getattr(inv.hosts["alpha"], attr) == expected


@pytest.mark.parametrize(("key", "toml", "attr", "expected"), HOST_SETTINGS)
def test_host_table_overrides_defaults(key: str, toml: str, attr: str, expected: object) -> None:
    other = {
        "user": '"other"', "port": "2", "repo": '"/x"', "remote": '"o"', "branch": '"b"',
        "sudo": "false", "flake_attr": '"y"', "restart_units": '["z.service"]',
        "system_profile": '"/p"', "detach": '"auto"', "run_dir": '"/r"',
        "identity_file": '"/k"',
    }  # fmt: skip
    inv = parse(f'[defaults]\n{key} = {other[key]}\n[hosts.alpha]\naddress = "a"\n{key} = {toml}\n')
    assert getattr(inv.hosts["alpha"], attr) == expected


def test_tags_are_deduplicated_in_order() -> None:
    inv = parse('[hosts.a]\naddress = "a"\ntags = ["web", "eu", "web"]\n')
    assert inv.hosts["a"].tags == ("web", "eu")


def test_known_hosts_accepts_a_single_string() -> None:
    assert parse('[ssh]\nknown_hosts = "/k"\n').ssh.known_hosts == ("/k",)


def test_keepalive_may_be_zero_but_connect_timeout_not() -> None:
    assert parse("[ssh]\nkeepalive_interval = 0\n").ssh.keepalive_interval == 0
    assert "ssh.connect_timeout: must be a number of seconds > 0" in error_of(
        "[ssh]\nconnect_timeout = 0\n"
    )


def test_controller_remote_and_branch_default_to_defaults() -> None:
    inv = parse('[defaults]\nremote = "up"\nbranch = "prod"\n')
    assert (inv.controller.remote, inv.controller.branch) == ("up", "prod")
    inv = parse('[defaults]\nremote = "up"\n[controller]\nremote = "mine"\n')
    assert (inv.controller.remote, inv.controller.branch) == ("mine", "main")


@pytest.mark.parametrize(
    ("repo", "expected"),
    [("~", HOME), ("~/nixcfg", f"{HOME}/nixcfg"), ("/srv/nixcfg", "/srv/nixcfg")],
)
def test_controller_repo_expands_tilde(repo: str, expected: str) -> None:
    assert parse(f'[controller]\nrepo = "{repo}"\n').controller.repo == expected


def test_flake_attr_template_and_explicit_value() -> None:
    inv = parse(
        '[defaults]\nflake_attr = "{name}-{name}"\n'
        '[hosts.a]\naddress = "a"\n[hosts.b]\naddress = "b"\nflake_attr = "custom"\n'
    )
    assert (inv.hosts["a"].flake_attr, inv.hosts["b"].flake_attr) == ("a-a", "custom")
    assert inv.hosts["a"].attr == "a-a"


def test_flake_attr_invalid_for_one_host_names_that_host() -> None:
    message = error_of('[defaults]\nflake_attr = "{name}.x"\n[hosts."a."]\naddress = "a"\n')
    assert message.startswith('fleet.toml: hosts."a.".flake_attr: invalid flake attribute')
    assert "set flake_attr for this host" in message


@pytest.mark.parametrize("template", ["{host}", "{name", "{}", "{0}", "{name!r}", "{name:>9}"])
def test_flake_attr_only_name_placeholder(template: str) -> None:
    message = error_of(f'[defaults]\nflake_attr = "{template}"\n')
    assert "defaults.flake_attr: invalid flake_attr" in message


def test_tuning_a_builtin_op() -> None:
    inv = parse('[ops.pull]\ntimeout = 99\nretries = 3\ndescription = "mine"\n')
    pull = inv.ops.get("pull")
    assert (pull.timeout, pull.retries, pull.description, pull.warn_after) == (99, 3, "mine", 120)


# ---------------------------------------------------------------------------------------------
# Precedence: host table > [defaults] > ~/.ssh/config (matched on address) > built-in

SSH_CONFIG = """\
Include conf.d/*.conf
Host *.lan !nas.lan
    User lanuser
    Port 2022
Host *
    IdentityFile ~/.ssh/id_all
"""

SSH_ALIAS_CONF = """\
Host alias-?
    HostName %h.example.org
    User sshuser
    Port 2200
    IdentityFile ~/.ssh/id_alias
    ProxyJump jump@bastion:22
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / ".ssh" / "conf.d").mkdir(parents=True)
    (tmp_path / ".ssh" / "config").write_text(SSH_CONFIG)
    (tmp_path / ".ssh" / "conf.d" / "alias.conf").write_text(SSH_ALIAS_CONF)
    return tmp_path


PRECEDENCE: list[tuple[str, str, str, dict[str, Any]]] = [
    # (case, [defaults] lines, host lines (address first), expected Host fields)
    (
        "built-in",
        "",
        'address = "plain"',
        dict(hostname="plain", user="root", port=22, identity_files=("~/.ssh/id_all",),
             proxy_jump=None),
    ),
    (
        "ssh-config-alias-via-include",
        "",
        'address = "alias-1"',
        dict(hostname="alias-1.example.org", user="sshuser", port=2200,
             identity_files=("~/.ssh/id_alias", "~/.ssh/id_all"), proxy_jump="jump@bastion:22"),
    ),
    (
        "ssh-config-wildcard",
        "",
        'address = "box.lan"',
        dict(hostname="box.lan", user="lanuser", port=2022, identity_files=("~/.ssh/id_all",)),
    ),
    (
        "ssh-config-negated-wildcard",
        "",
        'address = "nas.lan"',
        dict(hostname="nas.lan", user="root", port=22),
    ),
    (
        "defaults-over-ssh-config",
        'user = "duser"\nport = 2300\nidentity_file = "~/.ssh/id_def"',
        'address = "alias-1"',
        dict(hostname="alias-1.example.org", user="duser", port=2300,
             identity_files=("~/.ssh/id_def", "~/.ssh/id_alias", "~/.ssh/id_all")),
    ),
    (
        "host-over-defaults",
        'user = "duser"\nport = 2300\nidentity_file = "~/.ssh/id_def"',
        'address = "alias-1"\nuser = "huser"\nport = 2400\nidentity_file = "~/.ssh/id_host"',
        dict(user="huser", port=2400,
             identity_files=("~/.ssh/id_host", "~/.ssh/id_alias", "~/.ssh/id_all")),
    ),
    (
        "explicit-value-equal-to-built-in-still-wins",
        'user = "root"\nport = 22',
        'address = "alias-2"',
        dict(hostname="alias-2.example.org", user="root", port=22),
    ),
    (
        "host-only-user",
        "",
        'address = "box.lan"\nuser = "me"',
        dict(user="me", port=2022),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("defaults", "host", "expected"), [c[1:] for c in PRECEDENCE], ids=[c[0] for c in PRECEDENCE]
)
def test_precedence(home: Path, defaults: str, host: str, expected: dict[str, Any]) -> None:
    config = home / "fleet.toml"
    config.write_text(f"[defaults]\n{defaults}\n[hosts.h]\n{host}\n")
    inv = load_inventory(config, env={"HOME": str(home)})
    got = inv.hosts["h"]
    assert {k: getattr(got, k) for k in expected} == expected


def test_ssh_identity_file_comes_last(home: Path) -> None:
    config = home / "fleet.toml"
    config.write_text(
        '[ssh]\nidentity_file = "~/.ssh/id_fleet"\n'
        '[hosts.h]\naddress = "alias-1"\nidentity_file = "~/.ssh/id_host"\n'
    )
    inv = load_inventory(config, env={"HOME": str(home)})
    assert inv.hosts["h"].identity_files == (
        "~/.ssh/id_host", "~/.ssh/id_alias", "~/.ssh/id_all", "~/.ssh/id_fleet",
    )  # fmt: skip


def test_ssh_config_can_be_turned_off(home: Path) -> None:
    config = home / "fleet.toml"
    config.write_text('[hosts.h]\naddress = "alias-1"\n')
    inv = load_inventory(config, ssh_config=None, env={"HOME": str(home)})
    assert (inv.hosts["h"].hostname, inv.hosts["h"].user) == ("alias-1", "root")
    assert inv.path == config


def test_explicit_ssh_config_path(home: Path) -> None:
    other = home / "other_config"
    other.write_text("Host *\n  User other\n")
    config = home / "fleet.toml"
    config.write_text('[hosts.h]\naddress = "x"\n')
    assert load_inventory(config, ssh_config=other).hosts["h"].user == "other"


def test_parse_inventory_with_ssh_config_text() -> None:
    inv = parse('[hosts.h]\naddress = "a"\n', "Host a\n  HostName 192.0.2.1\n  Port 2\n")
    assert (inv.hosts["h"].hostname, inv.hosts["h"].port) == ("192.0.2.1", 2)


# ---------------------------------------------------------------------------------------------
# Errors: structure, types, unknown keys, ops and pipelines


def test_host_without_address() -> None:
    message = error_of('[hosts.alpha]\nuser = "x"\n')
    assert message == "fleet.toml: hosts.alpha: missing required key 'address'"


def test_error_carries_file_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_inventory('[hosts.a]\naddress = "a"\nbranch = "-x"\n', path="/etc/fleet.toml")
    assert str(info.value) == (
        "/etc/fleet.toml: hosts.a.branch: invalid git branch name '-x' (must not start with '-')"
    )
    assert (info.value.file, info.value.key) == ("/etc/fleet.toml", "hosts.a.branch")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name = 1\n", "fleet.toml: name: unknown key (allowed: ssh, defaults, controller,"),
        (
            '[hosts.a]\naddress = "a"\nadress = "b"\n',
            "fleet.toml: hosts.a.adress: unknown key (did you mean 'address'? allowed: address,",
        ),
        ('[defaults]\naddress = "a"\n', "fleet.toml: defaults.address: unknown key"),
        ('[defaults]\ntags = ["a"]\n', "fleet.toml: defaults.tags: unknown key"),
        ('[ssh]\nuser = "a"\n', "fleet.toml: ssh.user: unknown key"),
        ('[ssh]\nknown_host = "a"\n', "fleet.toml: ssh.known_host: unknown key (did you mean"),
        ('[controller]\nuser = "a"\n', "fleet.toml: controller.user: unknown key"),
        ('[ops.x]\ncmd = "a"\n', "fleet.toml: ops.x.cmd: unknown key"),
        ('[pipelines.p]\nsteps = ["pull"]\n', "fleet.toml: pipelines.p.steps: unknown key"),
        (
            '[hosts.a]\naddress = "a"\n[hosts.a.extra]\nx = 1\n',
            "fleet.toml: hosts.a.extra: unknown",
        ),
    ],
)
def test_unknown_keys(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[hosts.a]\naddress = 1\n", "hosts.a.address: expected a string, got integer"),
        ("[hosts.a]\naddress = 1979-05-27\n", "hosts.a.address: expected a string, got date"),
        (
            '[hosts.a]\naddress = "a"\nport = "22"\n',
            "hosts.a.port: expected an integer, got string",
        ),
        (
            '[hosts.a]\naddress = "a"\nport = true\n',
            "hosts.a.port: expected an integer, got boolean",
        ),
        ('[hosts.a]\naddress = "a"\nport = 22.0\n', "hosts.a.port: expected an integer, got float"),
        (
            '[hosts.a]\naddress = "a"\nport = 0\n',
            "hosts.a.port: must be between 1 and 65535, got 0",
        ),
        ('[hosts.a]\naddress = "a"\nport = 65536\n', "hosts.a.port: must be between 1 and 65535"),
        ("[defaults]\nport = 99999999999999999999\n", "defaults.port: must be between 1 and 65535"),
        (
            '[hosts.a]\naddress = "a"\nsudo = "yes"\n',
            "hosts.a.sudo: expected true or false, got string",
        ),
        (
            '[hosts.a]\naddress = "a"\ntags = "eu"\n',
            "hosts.a.tags: expected an array of strings, got string",
        ),
        (
            '[hosts.a]\naddress = "a"\ntags = ["eu", 1]\n',
            "hosts.a.tags[1]: expected a string, got integer",
        ),
        (
            '[defaults]\nrestart_units = "a.service"\n',
            "defaults.restart_units: expected an array of strings",
        ),
        (
            "[ssh]\nknown_hosts = 1\n",
            "ssh.known_hosts: expected a string or an array of strings, got integer",
        ),
        ("[ssh]\nknown_hosts = []\n", "ssh.known_hosts: needs at least one file"),
        (
            "[ssh]\nconnect_timeout = -1\n",
            "ssh.connect_timeout: must be a number of seconds > 0, got -1",
        ),
        (
            "[ssh]\nconnect_timeout = nan\n",
            "ssh.connect_timeout: must be a number of seconds > 0, got nan",
        ),
        (
            "[ssh]\nconnect_timeout = inf\n",
            "ssh.connect_timeout: must be a number of seconds > 0, got inf",
        ),
        (
            '[ssh]\nconnect_timeout = "5"\n',
            "ssh.connect_timeout: expected a number of seconds, got string",
        ),
        (
            "[ssh]\nconnect_timeout = true\n",
            "ssh.connect_timeout: expected a number of seconds, got boolean",
        ),
        (
            "[ssh]\nkeepalive_interval = -1\n",
            "ssh.keepalive_interval: must be a number of seconds >= 0",
        ),
        (
            '[ssh]\nhost_key_policy = "yes"\n',
            "ssh.host_key_policy: invalid value 'yes' (one of: strict, accept-new)",
        ),
        (
            '[defaults]\ndetach = "nohup"\n',
            "defaults.detach: invalid value 'nohup' (one of: auto, systemd-run, setsid)",
        ),
        ("[ops.pull]\ntimeout = 1e9\n", "ops.pull.timeout: must be at most 604800 seconds"),
        ("[ops.pull]\nretries = -1\n", "ops.pull.retries: must be between 0 and 100, got -1"),
        ("[ops.pull]\nretries = 1.5\n", "ops.pull.retries: expected an integer, got float"),
        (
            "[ops.pull]\nwarn_after = [1]\n",
            "ops.pull.warn_after: expected a number of seconds, got array",
        ),
        (
            '[ops.x]\ncommand = "a"\nscope = "remote"\n',
            "ops.x.scope: invalid value 'remote' (one of: host, controller)",
        ),
        ("hosts = []\n", "hosts: expected a table, got array"),
        ('[[hosts]]\naddress = "a"\n', "hosts: expected a table, got array"),
        ('[hosts]\na = "x"\n', "hosts.a: expected a table, got string"),
        ("ssh = 1\n", "ssh: expected a table, got integer"),
        (
            '[pipelines.p]\nops = "pull"\n',
            "pipelines.p.ops: expected an array of strings, got string",
        ),
        ("[pipelines.p]\nops = [1]\n", "pipelines.p.ops[0]: expected a string, got integer"),
        ("[controller]\ngit_name = 1\n", "controller.git_name: expected a string, got integer"),
    ],
)
def test_wrong_types_and_ranges(text: str, expected: str) -> None:
    assert error_of(text).startswith(f"fleet.toml: {expected}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[pipelines.p]\nops = ["pull", "nope"]\n', "pipelines.p.ops: unknown op 'nope'"),
        ("[pipelines.p]\nops = []\n", "pipelines.p.ops: a pipeline needs at least one op"),
        ('[pipelines.p]\ndescription = "x"\n', "pipelines.p: missing required key 'ops'"),
        (
            '[pipelines.do-all]\nops = ["pull"]\n',
            "pipelines.do-all: 'do-all' is a built-in pipeline",
        ),
        (
            '[pipelines.Do-All]\nops = ["pull"]\n',
            "pipelines.Do-All: pipeline name differs from 'do-all' only in case",
        ),
        ('[pipelines."-p"]\nops = ["pull"]\n', "pipelines.-p: invalid pipeline name (letters"),
        (
            '[ops.pull]\ncommand = "echo"\n',
            "ops.pull.command: a built-in op may change only timeout",
        ),
        ('[ops.pull]\nscope = "controller"\n', "ops.pull.scope: a built-in op may change only"),
        (
            '[ops.x]\ndescription = "d"\n',
            "ops.x: missing required key 'command' (a new op needs one)",
        ),
        (
            '[ops.x]\ncommand = "echo {host}"\n',
            "ops.x.command: unknown placeholder {host} (allowed:",
        ),
        ('[ops.x]\ncommand = "echo {"\n', "ops.x.command: Single '{' encountered"),
        ('[ops.Pull]\ncommand = "echo"\n', "ops.Pull: op name differs from 'pull' only in case"),
        ('[ops."a b"]\ncommand = "echo"\n', 'ops."a b": invalid op name (letters'),
        (
            '[hosts.Alpha]\naddress = "a"\n[hosts.alpha]\naddress = "b"\n',
            "hosts.alpha: host name differs from 'Alpha' only in case",
        ),
        (
            '[hosts."alpha."]\naddress = "a"\n[hosts."alpha.."]\naddress = "b"\n',
            'hosts."alpha..": invalid host name',
        ),
        ('[hosts."-alpha"]\naddress = "a"\n', "hosts.-alpha: invalid host name (letters"),
        ('[hosts.".alpha"]\naddress = "a"\n', 'hosts.".alpha": invalid host name (letters'),
        ('[hosts.""]\naddress = "a"\n', 'hosts."": invalid host name (letters'),
    ],
)
def test_ops_pipelines_and_names(text: str, expected: str) -> None:
    assert error_of(text).startswith(f"fleet.toml: {expected}")


def test_duplicate_host_table_is_a_toml_error_with_its_line() -> None:
    message = error_of('[hosts.a]\naddress = "a"\n\n[hosts.a]\naddress = "b"\n')
    assert message.startswith("fleet.toml: line 4: TOML syntax error: Cannot declare")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[ssh]\n\n\n\n\n\naddress = "a\n', "line 7: TOML syntax error: "),
        ("[hosts.a]\naddress = \n", "line 2: TOML syntax error: Invalid value (column 11)"),
        ("a = [\n1,\n", "line 3: TOML syntax error: "),
        (
            '[hosts.a]\naddress = "a"\naddress = "b"\n',
            "line 3: TOML syntax error: Cannot overwrite a value",
        ),
        ("x = " + "[" * 100_000, "TOML syntax error: values nested too deeply"),
    ],
)
def test_toml_syntax_errors_report_the_line(text: str, expected: str) -> None:
    assert error_of(text).startswith(f"fleet.toml: {expected}")


# ---------------------------------------------------------------------------------------------
# Hostile values in every string field


def _toml(data: Mapping[str, Any]) -> str:
    """A tiny TOML writer for nested tables of strings, numbers, booleans and lists."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(v, ensure_ascii=False)

    def table(path: list[str], t: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, dict)}
        if path:
            lines.append("[" + ".".join(json.dumps(p, ensure_ascii=False) for p in path) + "]")
        lines.extend(
            f"{json.dumps(k, ensure_ascii=False)} = {value(v)}" for k, v in scalars.items()
        )
        for k, v in t.items():
            if isinstance(v, dict):
                table([*path, k], v)

    table([], data)
    return "\n".join(lines) + "\n"


def _base() -> dict[str, Any]:
    return {
        "hosts": {"alpha": {"address": "10.0.0.1"}},
        "ops": {"my-op": {"command": "true"}},
        "pipelines": {"my-pipe": {"ops": ["pull"]}},
    }


RESTRICTED = "restricted"  # every hostile payload is refused
LINE = "line"  # free text on one line: newline, NUL, leading '-', length refused
DESCRIPTION = "description"  # free text on one line; may start with '-'
COMMAND = "command"  # free text over lines: NUL and length refused

# (where the value goes, a valid value, kind, whether the value goes in a list)
HOST_FIELDS = [
    ("user", "deploy"), ("repo", "/etc/nixos"), ("remote", "origin"), ("branch", "main"),
    ("flake_attr", "{name}"), ("restart_units", "fleet.service"),
    ("system_profile", "/run/current-system"), ("detach", "auto"), ("run_dir", "/run/fleet"),
    ("identity_file", "~/.ssh/id"),
]  # fmt: skip
LISTS = {"restart_units", "tags", "known_hosts", "ops"}
FIELDS: list[tuple[tuple[str, ...], str, str]] = [
    (("ssh", "identity_file"), "~/.ssh/id", RESTRICTED),
    (("ssh", "known_hosts"), "~/.ssh/known_hosts", RESTRICTED),
    (("ssh", "host_key_policy"), "strict", RESTRICTED),
    *((("defaults", key), good, RESTRICTED) for key, good in HOST_FIELDS),
    *((("hosts", "alpha", key), good, RESTRICTED) for key, good in HOST_FIELDS),
    (("hosts", "alpha", "address"), "alpha.example.org", RESTRICTED),
    (("hosts", "alpha", "tags"), "eu", RESTRICTED),
    (("controller", "repo"), "~/src/nixcfg", RESTRICTED),
    (("controller", "flake_input"), "fleet", RESTRICTED),
    (("controller", "pr_ref"), "refs/pull/{pr}/head", RESTRICTED),
    (("controller", "git_email"), "fleet@example.org", RESTRICTED),
    (("controller", "remote"), "origin", RESTRICTED),
    (("controller", "branch"), "main", RESTRICTED),
    (("controller", "git_name"), "Fleet", LINE),
    (("ops", "my-op", "scope"), "host", RESTRICTED),
    (("ops", "my-op", "description"), "mine", DESCRIPTION),
    (("ops", "pull", "description"), "mine", DESCRIPTION),
    (("ops", "my-op", "command"), "true", COMMAND),
    (("pipelines", "my-pipe", "ops"), "pull", RESTRICTED),
    (("pipelines", "my-pipe", "description"), "mine", DESCRIPTION),
    # names: the value is a table key
    (("hosts", "*"), "beta", RESTRICTED),
    (("ops", "*"), "other-op", RESTRICTED),
    (("pipelines", "*"), "other-pipe", RESTRICTED),
]

PAYLOADS: dict[str, Callable[[str], str]] = {
    "semicolon": lambda v: v + ";touch /tmp/x",
    "command-substitution": lambda v: v + "$(touch /tmp/x)",
    "backticks": lambda v: v + "`touch /tmp/x`",
    "single-quote": lambda v: v + "'",
    "double-quote": lambda v: v + '"',
    "space": lambda v: v + " x",
    "newline": lambda v: v + "\ntouch /tmp/x",
    "carriage-return": lambda v: v + "\rx",
    "nul": lambda v: v + "\x00",
    "escape": lambda v: v + "\x1b[31m",
    "leading-dash": lambda v: "-" + v,
    "long": lambda v: v + "a" * 10_000,
    "non-ascii": lambda v: v + "é",
    "fullwidth-semicolon": lambda v: v + "\uff1b",
    "line-separator": lambda v: v + "\u2028",
    "empty": lambda v: "",
}
REFUSED = {
    RESTRICTED: set(PAYLOADS),
    LINE: {"newline", "carriage-return", "nul", "escape", "leading-dash", "long", "line-separator",
           "empty"},
    DESCRIPTION: {"newline", "carriage-return", "nul", "escape", "long", "line-separator"},
    COMMAND: {"nul", "escape", "long", "carriage-return", "line-separator", "empty"},
}  # fmt: skip


def _with_value(path: tuple[str, ...], value: str) -> tuple[dict[str, Any], str]:
    """The base document with `value` at `path` (a table key where the path ends in '*')."""
    data = _base()
    *tables, key = path
    target = data
    for t in tables:
        target = target.setdefault(t, {})
    if key == "*":
        target[value] = {"hosts": {"address": "a"}, "ops": {"command": "true"},
                         "pipelines": {"ops": ["pull"]}}[tables[0]]  # fmt: skip
        return data, ".".join(tables)
    target[key] = [value] if key in LISTS else value
    return data, ".".join(path)


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize(("path", "good", "kind"), FIELDS, ids=[".".join(f[0]) for f in FIELDS])
def test_hostile_values(path: tuple[str, ...], good: str, kind: str, payload: str) -> None:
    data, key = _with_value(path, PAYLOADS[payload](good))
    text = _toml(data)
    if payload not in REFUSED[kind]:
        parse(text)
        return
    message = error_of(text)
    assert message.startswith(f"fleet.toml: {key}")
    assert len(message) < 400


@pytest.mark.parametrize(("path", "good", "kind"), FIELDS, ids=[".".join(f[0]) for f in FIELDS])
def test_good_values_are_accepted(path: tuple[str, ...], good: str, kind: str) -> None:
    data, _ = _with_value(path, good)
    parse(_toml(data))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("address", "fe80::1"), ("address", "::1"), ("address", "192.0.2.1"),
        ("address", "my_alias"),
        ("user", "_svc-deploy.1"),
        ("user", "John.Doe"), ("branch", "feature/x-1.2_3"), ("remote", "my.remote"),
        ("repo", "/srv/nix_cfg+2"), ("flake_attr", "web.1"),
        ("restart_units", "getty@tty1.service"), ("restart_units", "foo\\x2dbar.mount"),
        ("identity_file", "/etc/fleet/id@host,1"),
    ],
)  # fmt: skip
def test_unusual_but_valid_values(key: str, value: str) -> None:
    data, _ = _with_value(("hosts", "alpha", key), value)
    parse(_toml(data))


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("branch", "a..b", "must not contain '..'"),
        ("branch", "a/", "must not start or end with '/'"),
        ("branch", "a//b", "contain '//'"),
        ("branch", "a.lock", "end with '.lock'"),
        ("branch", "a/.b", "start with '.'"),
        ("branch", "a.", "end with '.lock' or '.'"),
        ("branch", "HEAD", "HEAD is not a branch"),
        ("branch", "a@{1}", "letters, digits"),
        ("branch", "+main", "letters, digits"),
        ("branch", "a:b", "letters, digits"),
        ("branch", "a~1", "letters, digits"),
        ("branch", "a^", "letters, digits"),
        ("branch", "a*", "letters, digits"),
        ("branch", "a?", "letters, digits"),
        ("branch", "a[", "letters, digits"),
        ("branch", "a\\b", "letters, digits"),
        ("remote", "a/b", "a remote's name"),
        ("remote", "a..b", "must not contain '..'"),
        ("remote", "x.lock", "end with '.lock'"),
        ("repo", "relative/path", "an absolute path"),
        ("repo", "~/nixcfg", "'~' is not expanded on the host"),
        ("repo", "/etc/../nixos", "'..' components"),
        ("repo", "/etc/./nixos", "'..' components"),
        ("run_dir", "/run/~x", "an absolute path"),
        ("identity_file", "~user/.ssh/id", "an absolute or ~/ path"),
        ("user", "1user", "not starting with a digit"),
        ("user", "a b", "not starting with a digit"),
        ("user", "a" * 33, "longer than 32 characters"),
        ("port", "22", "expected an integer"),
        ("address", "user@host", "ssh alias"),
        ("address", ".host", "ssh alias"),
        ("address", "a" * 254, "longer than 253"),
        ("restart_units", "fleet", "ending in .service"),
        ("restart_units", "fleet.slice", "ending in .service"),
        ("restart_units", ".service", "ending in .service"),
        ("flake_attr", "a..b", "must not contain '..'"),
        ("flake_attr", "x'", "letters, digits"),
    ],
)
def test_value_rules(key: str, value: str, reason: str) -> None:
    data, _ = _with_value(("hosts", "alpha", key), value)
    message = error_of(_toml(data))
    assert message.startswith(f"fleet.toml: hosts.alpha.{key}")
    assert reason in message


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("pr_ref", "refs/pull/1/head", "must contain {pr}"),
        ("pr_ref", "refs/pull/{pr}/{x}", "no other placeholder"),
        ("pr_ref", "refs/pull/{pr}/../head", "'..'"),
        ("pr_ref", "+refs/pull/{pr}/head", "letters, digits"),
        ("flake_input", "1fleet", "not starting with a digit"),
        ("flake_input", "a.b", "a Nix identifier"),
        ("git_email", "fleet", "user@host"),
        ("git_email", "-x@y", "must not start with '-'"),
        ("git_name", " ", "must not be empty"),
        ("repo", "relative", "an absolute or ~/ path"),
    ],
)
def test_controller_value_rules(key: str, value: str, reason: str) -> None:
    message = error_of(_toml({"controller": {key: value}}))
    assert message.startswith(f"fleet.toml: controller.{key}: invalid")
    assert reason in message


def test_free_text_keeps_its_characters() -> None:
    inv = parse(
        _toml({
            "controller": {"git_name": "José O'Brien (ops; $team)"},
            "ops": {"x": {"command": "for f in $(ls); do echo \"$f\"; done\necho `date`\n",
                          "description": "- Überprüfung; 'quoted'"}},
        })
    )  # fmt: skip
    assert inv.controller.git_name == "José O'Brien (ops; $team)"
    assert inv.ops.get("x").description == "- Überprüfung; 'quoted'"


def test_command_length_limit() -> None:
    assert "longer than 4096" in error_of(_toml({"ops": {"x": {"command": "x" * 4097}}}))
    parse(_toml({"ops": {"x": {"command": "x" * 4096}}}))


# ---------------------------------------------------------------------------------------------
# Values from ~/.ssh/config are validated too

SSH_VALUES = [
    ("User", "user"),
    ("HostName", "address"),
    ("IdentityFile", "identity_file"),
    ("ProxyJump", "address"),
]


@pytest.mark.parametrize(
    "payload", ["x;touch /tmp/x", "$(touch /tmp/x)", "`id`", "-oProxyCommand=x", "é"]
)
@pytest.mark.parametrize(("keyword", "key"), SSH_VALUES)
def test_hostile_ssh_config_values(keyword: str, key: str, payload: str) -> None:
    ssh = f"Host a\n  {keyword} '{payload}'\n"
    message = error_of('[hosts.alpha]\naddress = "a"\n', ssh)
    assert message.startswith(f"fleet.toml: hosts.alpha.{key}: invalid")
    assert "from ssh config (ssh config, for 'a')" in message


def test_ssh_config_user_is_not_validated_when_overridden() -> None:
    inv = parse('[hosts.alpha]\naddress = "a"\nuser = "ok"\n', "Host a\n  User 'bad user'\n")
    assert inv.hosts["alpha"].user == "ok"


def test_ssh_config_syntax_error_names_the_ssh_config(home: Path) -> None:
    (home / ".ssh" / "config").write_text("Host a\n  Port nope\n")
    config = home / "fleet.toml"
    config.write_text('[hosts.h]\naddress = "a"\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(config, env={"HOME": str(home)})
    assert str(info.value) == f"{home}/.ssh/config: line 2: bad Port 'nope' (expected 1..65535)"


# ---------------------------------------------------------------------------------------------
# Loading files


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found$"):
        load_inventory(tmp_path / "nope.toml", ssh_config=None)


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_inventory(tmp_path, ssh_config=None)


def test_load_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_bytes(b'[hosts.a]\naddress = "a"\nuser = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(path, ssh_config=None)
    assert str(info.value) == f"{path}: line 3: not valid UTF-8"


def test_load_too_large(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_bytes(b"#" * (4 * 1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="too large"):
        load_inventory(path, ssh_config=None)


def test_load_reports_errors_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[hosts.a]\naddress = "a"\nport = 0\n')
    with pytest.raises(ConfigError, match=rf"^{path}: hosts\.a\.port: must be between"):
        load_inventory(path, ssh_config=None)


def test_load_full_example(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(FULL_EXAMPLE)
    inv = load_inventory(path, env={"HOME": str(tmp_path)})  # no ~/.ssh/config there
    assert inv.path == path
    assert list(inv.hosts) == ["alpha", "beta", "gamma"]


# ---------------------------------------------------------------------------------------------
# find_config


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (xdg / "fleet").mkdir(parents=True)
    return {
        "explicit": tmp_path / "explicit.toml",
        "env": tmp_path / "env.toml",
        "cwd": cwd / "fleet.toml",
        "user": xdg / "fleet" / "fleet.toml",
    }


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (["explicit", "env", "cwd", "user"], "explicit"),
        (["env", "cwd", "user"], "env"),
        (["cwd", "user"], "cwd"),
        (["user"], "user"),
    ],
)
def test_find_config_order(places: dict[str, Path], present: list[str], expected: str) -> None:
    for name in present:
        places[name].write_text("")
    explicit = str(places["explicit"]) if "explicit" in present else None
    env = {"FLEET_CONFIG": str(places["env"])} if "env" in present else {}
    assert find_config(explicit, env, places["cwd"].parent) == places[expected]


def test_find_config_explicit_is_relative_to_cwd(places: dict[str, Path]) -> None:
    places["cwd"].write_text("")
    cwd = places["cwd"].parent
    assert find_config("fleet.toml", {}, cwd) == cwd / "fleet.toml"


@pytest.mark.parametrize(
    ("explicit", "origin"), [("missing.toml", "--config"), (None, "$FLEET_CONFIG")]
)
def test_find_config_missing_given_file_is_an_error(
    places: dict[str, Path], explicit: str | None, origin: str
) -> None:
    places["cwd"].write_text("")  # never a silent fallback
    with pytest.raises(ConfigError) as info:
        find_config(explicit, {"FLEET_CONFIG": "missing.toml"}, places["cwd"].parent)
    assert str(info.value) == (
        f"config file not found: {places['cwd'].parent / 'missing.toml'} (from {origin})"
    )


def test_find_config_empty_env_is_unset(places: dict[str, Path]) -> None:
    places["user"].write_text("")
    assert find_config(None, {"FLEET_CONFIG": ""}, places["cwd"].parent) == places["user"]


def test_find_config_nothing_found_names_every_place(places: dict[str, Path]) -> None:
    with pytest.raises(ConfigError) as info:
        find_config(None, {}, places["cwd"].parent)
    message = str(info.value)
    assert "--config" in message and "$FLEET_CONFIG" in message
    assert str(places["cwd"]) in message and str(places["user"]) in message


# ---------------------------------------------------------------------------------------------
# Odds and ends


@pytest.mark.parametrize(
    "value", ["bastion", "u@b:22", "ssh://u@b:2222,j2", "[::1]:22", "u@[fe80::1]", "10.0.0.1"]
)
def test_proxy_jump_values(value: str) -> None:
    inv = parse('[hosts.alpha]\naddress = "a"\n', f"Host a\n  ProxyJump {value}\n")
    assert inv.hosts["alpha"].proxy_jump == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("ok,-oX=y", "address '-oX=y': must not start with '-'"),
        ("a:0", "port 0 is not 1..65535"),
        ("a:99999", "port 99999 is not 1..65535"),
        ("u@", "'u@' is not [user@]host[:port]"),
        ("a:b:c", "'a:b:c' is not [user@]host[:port]"),
        ("-u@h", "user name '-u': must not start with '-'"),
        ("a,", "'' is not [user@]host[:port]"),
    ],
)
def test_bad_proxy_jump(value: str, reason: str) -> None:
    message = error_of('[hosts.alpha]\naddress = "a"\n', f"Host a\n  ProxyJump {value}\n")
    assert message.startswith(
        f"fleet.toml: hosts.alpha.address: invalid ProxyJump {value!r} ({reason})"
    )


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_bytes(b'\xef\xbb\xbf[hosts.a]\naddress = "a"\n')
    assert list(load_inventory(path, ssh_config=None).hosts) == ["a"]


def test_validators_are_usable_on_their_own() -> None:
    check_branch("release/1.2")
    with pytest.raises(InvalidValue) as info:
        check_branch("-x")
    assert (info.value.what, info.value.value, info.value.why) == (
        "git branch name",
        "-x",
        "must not start with '-'",
    )
    assert str(info.value) == "invalid git branch name '-x' (must not start with '-')"
    with pytest.raises(ValueError, match="invalid user name"):
        check_user("Robert'); DROP TABLE runs;--")


def test_controller_is_not_a_host_name() -> None:
    with pytest.raises(ConfigError, match="reserved"):
        parse_inventory('[hosts.controller]\naddress = "10.0.0.1"\n')
