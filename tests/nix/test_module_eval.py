"""nix/module.nix and flake.nix, evaluated with nixpkgs' real lib (lib.evalModules).

The NixOS options the module sets and the builders it calls are stand-ins (tests/nix/
stand-ins.nix); its own options, their types and defaults, and the fleet.toml it renders are
real. The rendered settings (JSON here, where pkgs.formats.toml would run json2toml) are
converted to TOML and given to fleet itself, which must accept them.

Needs FLEET_NIXPKGS_LIB (see conftest.py); skipped without it.
"""

from __future__ import annotations

import ast
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
from tests.nix.conftest import (
    EVAL,
    HERE,
    ROOT,
    nix_eval,
    nix_eval_expression,
    nix_instantiate,
    nixpkgs_arg,
)

KEY = "/run/keys/fleet-ssh-key"
# This repository's fleet (nix/package.nix), in the store: never nixpkgs' fleet (fleetdm's).
OUR_FLEET = re.compile(r".*/[0-9a-z]{32}-fleet-deploy-[0-9.]+/bin/fleet")
BASE: dict[str, Any] = {
    "enable": True,
    "sshKeyFile": KEY,
    "settings": {"hosts": {"web1": {"tags": ["web"]}, "db1": {"address": "10.0.0.5"}}},
}


def config_json(**fleet: Any) -> str:
    return json.dumps({"services": {"fleet": {**BASE, **fleet}}})


def evaluate(nixpkgs: Path, *extra: str, **fleet: Any) -> dict[str, Any]:
    result = nix_eval(
        HERE / "eval-module.nix",
        *nixpkgs_arg(nixpkgs),
        "--argstr",
        "configJson",
        config_json(**fleet),
        *extra,
    )
    assert isinstance(result, dict)
    return result


def evaluation_error(nixpkgs: Path, **fleet: Any) -> str:
    args = [*EVAL, str(HERE / "eval-module.nix"), *nixpkgs_arg(nixpkgs)]
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


def test_a_minimal_configuration(stand_in_nixpkgs: Path, tmp_path: Path) -> None:
    result = evaluate(stand_in_nixpkgs)
    assert result["failedAssertions"] == []
    assert result["warnings"] == []
    # The package option defaults to pkgs.fleet-deploy (the flake's overlay adds it).
    assert result["package"] == "fleet-deploy"

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


def test_the_service(stand_in_nixpkgs: Path) -> None:
    result = evaluate(stand_in_nixpkgs)
    service = result["services"]["fleet"]
    config = service["serviceConfig"]
    assert service["wantedBy"] == ["multi-user.target"]
    assert service["restartIfChanged"] is False
    assert service["environment"]["FLEET_CONFIG"] == result["configFile"]
    assert service["environment"]["FLEET_STATE_DIR"] == "/var/lib/fleet"
    launcher, program, *args = shlex.split(config["ExecStart"])
    assert launcher.endswith("-fleet-with-ssh-key")  # the key, in an ssh-agent of the unit's own
    assert OUR_FLEET.fullmatch(program), program
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


def test_the_fleet_command_shares_the_services_config_state_and_key(stand_in_nixpkgs: Path) -> None:
    result = evaluate(stand_in_nixpkgs)
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
    assert rule["commands"][0]["command"].endswith("-fleet/bin/fleet")  # the wrapper


def test_everything_set(stand_in_nixpkgs: Path, tmp_path: Path) -> None:
    result = evaluate(
        stand_in_nixpkgs,
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


def test_a_dashboard_reachable_from_other_hosts_needs_a_token_file(stand_in_nixpkgs: Path) -> None:
    (message,) = evaluate(stand_in_nixpkgs, listen="0.0.0.0:8470")["failedAssertions"]
    assert 'services.fleet.listen = "0.0.0.0:8470" is not a loopback address' in message
    assert "services.fleet.tokenFile" in message
    for listen in ("127.0.0.1:8470", "127.0.0.2:9000", "localhost:8470", "[::1]:8470"):
        assert evaluate(stand_in_nixpkgs, listen=listen)["failedAssertions"] == [], listen


def test_a_schedule_must_name_a_pipeline(stand_in_nixpkgs: Path) -> None:
    schedules = {"typo": {"pipeline": "do-al", "onCalendar": "daily"}}
    (message,) = evaluate(stand_in_nixpkgs, schedules=schedules)["failedAssertions"]
    assert 'services.fleet.schedules.typo.pipeline = "do-al" names no pipeline' in message
    assert "do-all" in message


def test_the_module_knows_every_built_in_pipeline(stand_in_nixpkgs: Path) -> None:
    schedules = {
        f"s{i}": {"pipeline": p.id, "onCalendar": "daily"} for i, p in enumerate(BUILTIN_PIPELINES)
    }
    assert evaluate(stand_in_nixpkgs, schedules=schedules)["failedAssertions"] == []


def test_opening_the_firewall_for_a_loopback_dashboard_warns(stand_in_nixpkgs: Path) -> None:
    (warning,) = evaluate(stand_in_nixpkgs, openFirewall=True)["warnings"]
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
def test_type_errors(stand_in_nixpkgs: Path, fleet_options: dict[str, Any], expected: str) -> None:
    store = nix_eval_expression("builtins.storeDir")  # not /nix/store in the Nix build's sandbox
    options = json.loads(json.dumps(fleet_options).replace("@store@", store))
    assert expected in evaluation_error(stand_in_nixpkgs, **options)


# -- the flake ---------------------------------------------------------------------------------


def test_the_flakes_outputs(stand_in_nixpkgs: Path) -> None:
    shape = nix_eval(HERE / "eval-flake.nix", "-A", "shape", *nixpkgs_arg(stand_in_nixpkgs))
    linux = ["aarch64-linux", "x86_64-linux"]
    every = sorted([*linux, "aarch64-darwin", "x86_64-darwin"])
    assert shape["inputs"] == {"nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-25.11"}}
    assert shape["packages"] == {system: ["default", "fleet"] for system in every}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for system in every:
        assert set(shape["packageNames"][system].values()) == {f"fleet-deploy-{version}"}
        apps = shape["apps"][system]
        assert set(apps) == {"default", "fleet"}  # nix run .#fleet
        for app in apps.values():
            assert app["type"] == "app"
            assert OUR_FLEET.fullmatch(app["program"]), app["program"]
        # `nix flake check` wants a description; it is the package's.
        description = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["description"]
        assert shape["appDescriptions"][system] == {"default": description, "fleet": description}
    assert shape["checks"] == {
        system: {
            "package": f"fleet-deploy-{version}",
            "lint": "fleet-deploy-linters",
            "vm-pipeline": "vm-test-run-fleet-pipeline",
            "vm-dashboard": "vm-test-run-fleet-dashboard",
        }
        for system in linux
    }
    assert shape["devShells"] == {system: {"default": "nix-shell"} for system in linux}
    assert sorted(shape["formatter"]) == linux
    assert shape["nixosModules"] == ["default", "fleet"]
    # Added under a name nixpkgs does not use: nixpkgs' own fleet stays fleetdm's.
    assert shape["overlay"] == ["fleet-deploy"]
    assert shape["overlaid"] == f"fleet-deploy-{version}"


def programs_of(result: dict[str, Any]) -> list[str]:
    """Every store path a unit or the fleet command starts, with what follows it."""
    texts = [json.dumps(result["services"]), json.dumps(result["sudoRules"])]
    texts += [s["text"] or "" for s in result["scripts"]]
    return [m for text in texts for m in re.findall(r"/[^\s\"']*/bin/fleet\b", text)]


@pytest.mark.parametrize("from_flake", [False, True], ids=["module", "flake-module"])
@pytest.mark.parametrize("with_overlay", [True, False], ids=["overlay", "no-overlay"])
def test_no_unit_runs_nixpkgs_own_fleet(
    stand_in_nixpkgs: Path, from_flake: bool, with_overlay: bool
) -> None:
    """The stand-in nixpkgs has fleetdm's `fleet` (as nixpkgs 25.11 has): nothing may run it."""
    if not from_flake and not with_overlay:
        # nix/module.nix alone, on a host without the overlay: no default, and it says so.
        args = ["--argstr", "configJson", config_json(), "--arg", "withOverlay", "false"]
        failed = nix_instantiate(
            [*EVAL, str(HERE / "eval-module.nix"), *nixpkgs_arg(stand_in_nixpkgs), *args]
        )
        assert failed.returncode != 0
        assert "fleet-deploy" in failed.stderr
        return
    schedules = {"nightly": {"pipeline": "do-all", "onCalendar": "03:00"}}
    result = evaluate(
        stand_in_nixpkgs,
        "--arg", "fromFlake", json.dumps(from_flake),
        "--arg", "withOverlay", json.dumps(with_overlay),
        schedules=schedules,
    )  # fmt: skip
    assert result["failedAssertions"] == []
    assert result["package"] == "fleet-deploy"
    assert OUR_FLEET.fullmatch(result["packagePath"] + "/bin/fleet")
    programs = programs_of(result)
    # the service, the schedule and the fleet command (twice), and sudo's rule
    assert len(programs) >= 4, programs
    for program in programs:
        assert not program.startswith(result["fleetdmPath"] + "/"), program
        assert OUR_FLEET.fullmatch(program) or program.endswith("-fleet/bin/fleet"), program
    fleetdm = result.pop("fleetdmPath")
    assert fleetdm not in json.dumps(result)


def test_the_checked_in_lib_is_not_in_the_repository(nixpkgs_lib: Path) -> None:
    # Fetched code stays outside the repository.
    assert ROOT not in nixpkgs_lib.parents


# -- the package, as its check phase gets it ---------------------------------------------------


@pytest.fixture(scope="module")
def package(stand_in_nixpkgs: Path) -> dict[str, Any]:
    result = nix_eval(HERE / "eval-flake.nix", "-A", "package", *nixpkgs_arg(stand_in_nixpkgs))
    assert isinstance(result, dict)
    return result


def in_store(path: str) -> Path:
    """Where a store path is on this machine (scripts/modern-nix's store has a root of its own)."""
    root = os.environ.get("FLEET_NIX_ROOT")
    return Path(root + path) if root and not Path(path).exists() else Path(path)


def first_party_imports(source: Path) -> dict[str, set[str]]:
    """Top-level modules imported by the source's Python files that are this repository's."""
    ours = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix in ("", ".py")}
    found: dict[str, set[str]] = {}
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in ours:
                    found.setdefault(top, set()).add(str(path.relative_to(source)))
    return found


def test_the_source_has_everything_its_python_imports(package: dict[str, Any]) -> None:
    # tests/integration/test_bench_smoke.py imports bench.profile at module level: without
    # bench/ in the source, collection fails in the check phase, and mypy in checks.lint.
    source = in_store(package["src"])
    imported = first_party_imports(source)
    assert {"fleet", "tests", "bench"} <= set(imported)
    for module, importers in imported.items():
        assert (source / module).is_dir() or (source / f"{module}.py").is_file(), (
            f"{module} is imported by {sorted(importers)} but not in the package's source"
        )
    assert package["lintSource"].startswith(f"cp -r {package['src']} src\n")


def test_the_check_phase_has_setsid_and_so_has_the_wrapper(package: dict[str, Any]) -> None:
    phase = nix_eval_expression("import ./nix/check-phase.nix // { source = null; }")
    # scripts/check-sandboxed puts nix/check-phase.nix's programs on PATH: the same as these.
    python = {"hypothesis", "pytest-mock", "pytestCheckHook"}
    assert [p for p in package["nativeCheckInputs"] if p not in python] == phase["programs"]
    assert "util-linux" in phase["programs"]  # setsid
    wrapper_path = package["wrapperPath"].split(":")
    assert [p.split("-", 1)[1] for p in wrapper_path] == [
        "git/bin", "nix/bin", "openssh/bin", "util-linux/bin",
    ]  # fmt: skip
    assert package["disabledTestMarks"] == phase["disabledTestMarks"]
    assert package["disabledTestPaths"] == phase["disabledTestPaths"]
    registered = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    marks = {line.split(":")[0] for line in registered["ini_options"]["markers"]}
    assert set(phase["disabledTestMarks"]) <= marks


# -- the VM tests, evaluated -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vm_tests(stand_in_nixpkgs: Path) -> dict[str, Any]:
    result = nix_eval(HERE / "eval-flake.nix", "-A", "vmTests", *nixpkgs_arg(stand_in_nixpkgs))
    assert isinstance(result, dict)
    return result


def test_the_vm_tests_nodes_are_evaluated(vm_tests: dict[str, Any]) -> None:
    pipeline = vm_tests["vm-pipeline"]
    assert pipeline["drvPath"].endswith("-vm-test-run-fleet-pipeline.drv")
    assert set(pipeline["nodes"]) == {"controller", "target1", "target2", "target3"}
    for test in vm_tests.values():
        controller = test["nodes"]["controller"]
        assert controller["toplevel"].endswith("-nixos-system-controller.drv")
        assert controller["fleet"].startswith("fleet-deploy-")  # never nixpkgs' (fleetdm's) fleet
        _, program, *args = shlex.split(controller["execStart"])
        assert OUR_FLEET.fullmatch(program), program
        assert args[0] == "serve"
    # Each target has the systems it switches to in its store: one per round that works there.
    nodes = pipeline["nodes"]
    closures = {
        name: [p for p in node["additionalPaths"] if p.endswith("-runtime-closure")]
        for name, node in nodes.items()
        if name != "controller"
    }
    assert {name: len(c) for name, c in closures.items()} == {
        "target1": 4, "target2": 4, "target3": 3,  # target3's "broken" round does not evaluate
    }  # fmt: skip
    script = pipeline["testScript"]
    assert script.startswith("TARGETS = [target1, target2, target3]\n")
    rounds = json.loads(re.search(r"^ROUNDS = (.*)$", script, re.M).group(1))  # type: ignore[union-attr]
    assert set(rounds) == {"initial", "broken", "repaired", "cut"}


def test_the_config_flakes_broken_system_fails_to_evaluate(stand_in_nixpkgs: Path) -> None:
    hosts = {"target3": {"system": "x86_64-linux", "marker": "v2", "broken": True, "network": {}}}
    expression = (
        f"(import ./nix/tests/config/configurations.nix {{ nixpkgs = {stand_in_nixpkgs}; "
        f"hosts = builtins.fromJSON {json.dumps(json.dumps(hosts))}; }})"
        ".target3.config.system.build.toplevel.drvPath"
    )
    result = nix_instantiate([*EVAL, "-E", expression])
    assert result.returncode != 0
    assert "target3: this configuration is broken on purpose" in result.stderr
    # the same system, not broken: it evaluates
    repaired = expression.replace('\\"broken\\": true', '\\"broken\\": false')
    assert repaired != expression
    assert re.fullmatch(r".*-nixos-system-[a-z0-9]+\.drv", nix_eval_expression(repaired))
