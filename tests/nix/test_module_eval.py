"""nix/module.nix and flake.nix, evaluated with nixpkgs' real lib (lib.evalModules).

The NixOS options the module sets and the builders it calls are stand-ins (tests/nix/
stand-ins.nix); its own options, their types and defaults, and the fleet.toml it renders are
real. The rendered settings (JSON here, where pkgs.formats.toml would run json2toml) are
converted to TOML and given to fleet itself, which must accept them.

Needs FLEET_NIXPKGS_LIB (see conftest.py); skipped without it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from fleet.ops.pipelines import BUILTIN_PIPELINES
from tests.nix.conftest import HERE, ROOT, lib_arg, nix_eval, nix_eval_expression, nix_instantiate

KEY = "/run/keys/fleet-ssh-key"
BASE: dict[str, Any] = {
    "enable": True,
    "sshKeyFile": KEY,
    "settings": {"hosts": {"web1": {"tags": ["web"]}, "db1": {"address": "10.0.0.5"}}},
}


def config_json(**fleet: Any) -> str:
    return json.dumps({"services": {"fleet": {**BASE, **fleet}}})


def evaluate(lib: Path, *extra: str, **fleet: Any) -> dict[str, Any]:
    result = nix_eval(
        HERE / "eval-module.nix",
        *lib_arg(lib),
        "--argstr",
        "configJson",
        config_json(**fleet),
        *extra,
    )
    assert isinstance(result, dict)
    return result


def evaluation_error(lib: Path, **fleet: Any) -> str:
    args = ["--eval", "--strict", "--json", str(HERE / "eval-module.nix"), *lib_arg(lib)]
    result = nix_instantiate([*args, "--argstr", "configJson", config_json(**fleet)])
    assert result.returncode != 0, f"evaluated, but should not have: {result.stdout}"
    return result.stderr


# -- TOML, as json2toml would write it ---------------------------------------------------------


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(table: Mapping[str, Any], path: tuple[str, ...] = ()) -> str:
    lines = [
        f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, Mapping)
    ]
    for key, value in table.items():
        if isinstance(value, Mapping):
            header = ".".join(toml_key(p) for p in (*path, key))
            lines += ["", f"[{header}]", to_toml(value, (*path, key))]
    return "\n".join(lines)


def fleet(config: Mapping[str, Any], tmp_path: Path, *command: str) -> Any:
    """Run `python -m fleet --config <config as TOML> COMMAND --json`; return its JSON."""
    text = to_toml(config) + "\n"
    assert tomllib.loads(text) == config
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    env = {**os.environ, "HOME": str(tmp_path), "FLEET_STATE_DIR": str(tmp_path / "state")}
    env.pop("FLEET_CONFIG", None)
    argv = [sys.executable, "-m", "fleet", "--config", str(path), *command, "--json"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, f"{shlex.join(argv[1:])}:\n{result.stderr}\n{text}"
    return json.loads(result.stdout)


# -- the module --------------------------------------------------------------------------------


def test_a_minimal_configuration(nixpkgs_lib: Path, tmp_path: Path) -> None:
    result = evaluate(nixpkgs_lib)
    assert result["failedAssertions"] == []
    assert result["warnings"] == []
    # The package option defaults to pkgs.fleet (nixpkgs has none: the flake's overlay adds it).
    assert result["package"] == "fleet-from-overlay"

    settings = result["settings"]
    assert settings["ssh"]["known_hosts"] == [
        "/var/lib/fleet/known_hosts",
        "/etc/ssh/ssh_known_hosts",
    ]
    assert settings["ssh"]["host_key_policy"] == "strict"
    assert "identity_file" not in settings["ssh"]  # the key reaches fleet through ssh-agent
    assert "connect_timeout" not in settings["ssh"]  # null: left to fleet
    assert settings["hosts"]["web1"] == {"address": "web1", "tags": ["web"]}

    hosts = fleet(settings, tmp_path, "hosts")
    assert {h["name"]: h["address"] for h in hosts} == {"web1": "web1", "db1": "10.0.0.5"}
    assert {h["name"]: h["tags"] for h in hosts}["web1"] == ["web"]


def test_the_service(nixpkgs_lib: Path) -> None:
    result = evaluate(nixpkgs_lib)
    service = result["services"]["fleet"]
    config = service["serviceConfig"]
    assert service["wantedBy"] == ["multi-user.target"]
    assert service["restartIfChanged"] is False
    assert service["environment"]["FLEET_CONFIG"] == result["configFile"]
    assert service["environment"]["FLEET_STATE_DIR"] == "/var/lib/fleet"
    launcher, program, *args = shlex.split(config["ExecStart"])
    assert launcher.endswith("-fleet-with-ssh-key")  # the key, in an ssh-agent of the unit's own
    assert program.endswith("-fleet/bin/fleet")
    assert args == ["serve", "--listen", "127.0.0.1:8470"]
    assert "--token-file" not in config["ExecStart"]
    assert config["LoadCredential"] == [f"ssh-key:{KEY}"]
    assert config["User"] == "fleet" and config["StateDirectory"] == "fleet"
    assert config["RuntimeDirectory"] == "fleet"
    assert config["ExecStartPre"] == []  # no controllerRepoUrl
    for key, value in {
        "NoNewPrivileges": True,
        "ProtectSystem": "strict",
        "ProtectHome": True,
        "PrivateTmp": True,
        "PrivateDevices": True,
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"],
    }.items():
        assert config[key] == value, key
    assert "@system-service" in config["SystemCallFilter"]
    assert result["users"]["fleet"]["isSystemUser"] is True
    assert result["groups"] == ["fleet"]
    assert result["allowedTCPPorts"] == []
    assert result["timers"] == {}


def test_the_fleet_command_shares_the_services_config_state_and_key(nixpkgs_lib: Path) -> None:
    result = evaluate(nixpkgs_lib)
    (wrapper,) = [s for s in result["scripts"] if s["name"] == "fleet"]
    text = wrapper["text"]
    service = result["services"]["fleet"]
    for name, value in service["environment"].items():
        assert shlex.quote(f"--setenv={name}={value}") in text, name
    assert shlex.quote(f"--property=LoadCredential=ssh-key:{KEY}") in text
    assert shlex.quote("--property=ProtectSystem=strict") in text
    assert "--uid=fleet --gid=fleet" in text
    checked = subprocess.run(
        ["bash", "-n"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
    # Members of the fleet group run it through sudo, as root, which hands it to the fleet user.
    (rule,) = result["sudoRules"]
    assert rule["groups"] == ["fleet"]
    assert rule["commands"][0]["command"].endswith("-fleet/bin/fleet")


def test_everything_set(nixpkgs_lib: Path, tmp_path: Path) -> None:
    result = evaluate(
        nixpkgs_lib,
        listen="0.0.0.0:8470",
        tokenFile="/run/keys/fleet-token",
        openFirewall=True,
        controllerRepoUrl="git@git.example.org:fleet/config.git",
        schedules={
            "nightly": {"pipeline": "do-all", "onCalendar": "03:00"},
            "web": {"pipeline": "deploy-web", "on": "tag:web", "onCalendar": "Sun 05:00"},
        },
        settings={
            **BASE["settings"],
            "ssh": {"host_key_policy": "accept-new", "connect_timeout": 5},
            "defaults": {"user": "deploy", "sudo": True, "branch": "production"},
            "controller": {"git_name": "Fleet Bot", "git_email": "fleet@example.org"},
            "ops": {"smoke": {"command": "curl -fsS http://localhost/", "timeout": 60}},
            "pipelines": {"deploy-web": {"ops": ["pull", "switch", "smoke"]}},
        },
    )
    assert result["failedAssertions"] == []
    assert result["allowedTCPPorts"] == [8470]
    config = result["services"]["fleet"]["serviceConfig"]
    assert config["ExecStart"].endswith(" --token-file ${CREDENTIALS_DIRECTORY}/token")
    assert config["LoadCredential"] == [f"ssh-key:{KEY}", "token:/run/keys/fleet-token"]
    assert len(config["ExecStartPre"]) == 1
    assert (
        "StrictHostKeyChecking=accept-new"
        in result["services"]["fleet"]["environment"]["GIT_SSH_COMMAND"]
    )

    settings = result["settings"]
    assert settings["controller"]["repo"] == "/var/lib/fleet/repo"
    assert settings["defaults"] == {"user": "deploy", "sudo": True, "branch": "production"}
    pipelines = fleet(settings, tmp_path, "pipelines")
    assert {"do-all", "deploy-web"} <= {p["id"] for p in pipelines}
    hosts = fleet(settings, tmp_path, "hosts")
    assert {h["user"] for h in hosts} == {"deploy"}
    assert {h["branch"] for h in hosts} == {"production"}

    web = result["services"]["fleet-schedule-web"]
    launcher, _, *args = shlex.split(web["serviceConfig"]["ExecStart"])
    assert launcher.endswith("-fleet-with-ssh-key")
    assert args == ["run", "deploy-web", "--on", "tag:web"]
    assert web["serviceConfig"]["Type"] == "oneshot"
    assert web["serviceConfig"]["LoadCredential"] == [f"ssh-key:{KEY}"]
    assert web["restartIfChanged"] is False
    timer = result["timers"]["fleet-schedule-nightly"]
    assert timer["timerConfig"] == {"OnCalendar": "03:00", "Persistent": True}
    assert timer["wantedBy"] == ["timers.target"]


def test_a_dashboard_reachable_from_other_hosts_needs_a_token_file(nixpkgs_lib: Path) -> None:
    (message,) = evaluate(nixpkgs_lib, listen="0.0.0.0:8470")["failedAssertions"]
    assert 'services.fleet.listen = "0.0.0.0:8470" is not a loopback address' in message
    assert "services.fleet.tokenFile" in message
    for listen in ("127.0.0.1:8470", "127.0.0.2:9000", "localhost:8470", "[::1]:8470"):
        assert evaluate(nixpkgs_lib, listen=listen)["failedAssertions"] == [], listen


def test_a_schedule_must_name_a_pipeline(nixpkgs_lib: Path) -> None:
    schedules = {"typo": {"pipeline": "do-al", "onCalendar": "daily"}}
    (message,) = evaluate(nixpkgs_lib, schedules=schedules)["failedAssertions"]
    assert 'services.fleet.schedules.typo.pipeline = "do-al" names no pipeline' in message
    assert "do-all" in message


def test_the_module_knows_every_built_in_pipeline(nixpkgs_lib: Path) -> None:
    schedules = {
        f"s{i}": {"pipeline": p.id, "onCalendar": "daily"} for i, p in enumerate(BUILTIN_PIPELINES)
    }
    assert evaluate(nixpkgs_lib, schedules=schedules)["failedAssertions"] == []


def test_opening_the_firewall_for_a_loopback_dashboard_warns(nixpkgs_lib: Path) -> None:
    (warning,) = evaluate(nixpkgs_lib, openFirewall=True)["warnings"]
    assert "services.fleet.openFirewall" in warning


@pytest.mark.parametrize(
    ("fleet_options", "expected"),
    [
        ({"sshKeyFile": "@store@/00000000000000000000000000000000-key"}, "not in the Nix store"),
        ({"listen": "8470"}, "services.fleet.listen"),
        ({"settings": {"ssh": {"host_key_policy": "trust-me"}}}, "host_key_policy"),
        ({"settings": {"hosts": {"web1": {"tags": "web"}}}}, "tags"),
        ({"schedules": {"x": {"pipeline": "do-all"}}}, "onCalendar"),
    ],
)
def test_type_errors(nixpkgs_lib: Path, fleet_options: dict[str, Any], expected: str) -> None:
    store = nix_eval_expression("builtins.storeDir")  # not /nix/store in the Nix build's sandbox
    options = json.loads(json.dumps(fleet_options).replace("@store@", store))
    assert expected in evaluation_error(nixpkgs_lib, **options)


# -- the flake ---------------------------------------------------------------------------------


def test_the_flakes_outputs(nixpkgs_lib: Path) -> None:
    shape = nix_eval(HERE / "eval-flake.nix", "-A", "shape", *lib_arg(nixpkgs_lib))
    linux = ["aarch64-linux", "x86_64-linux"]
    every = sorted([*linux, "aarch64-darwin", "x86_64-darwin"])
    assert shape["inputs"] == {"nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-25.11"}}
    assert shape["packages"] == {system: ["default", "fleet"] for system in every}
    for system in every:
        apps = shape["apps"][system]
        assert set(apps) == {"default", "fleet"}
        for app in apps.values():
            assert app["type"] == "app"
            assert app["program"].endswith("-fleet/bin/fleet")
        # `nix flake check` wants a description; it is the package's.
        assert shape["appDescriptions"][system] == {
            "default": "stand-in for fleet",
            "fleet": "stand-in for fleet",
        }
    assert shape["checks"] == {
        system: {
            "package": "fleet",
            "lint": "fleet-linters",
            "vm-pipeline": "vm-test-fleet-pipeline",
            "vm-dashboard": "vm-test-fleet-dashboard",
        }
        for system in linux
    }
    assert shape["devShells"] == {system: {"default": "fleet-dev-shell"} for system in linux}
    assert sorted(shape["formatter"]) == linux
    assert shape["nixosModules"] == ["default", "fleet"]
    assert shape["overlay"] == ["fleet"]


def test_the_flakes_module_builds_fleet_when_pkgs_has_none(nixpkgs_lib: Path) -> None:
    with_flake = ["--arg", "fromFlake", "true"]
    alone = evaluate(nixpkgs_lib, *with_flake, "--arg", "withOverlay", "false")
    assert alone["failedAssertions"] == []
    assert alone["package"] == "fleet"  # pkgs.callPackage ./nix/package.nix
    # With the overlay applied, the module uses pkgs.fleet.
    assert evaluate(nixpkgs_lib, *with_flake)["package"] == "fleet-from-overlay"


def test_the_checked_in_lib_is_not_in_the_repository(nixpkgs_lib: Path) -> None:
    # Fetched code stays outside the repository.
    assert ROOT not in nixpkgs_lib.parents
