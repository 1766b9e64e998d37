"""Exact argv of every op, and hostile values that must stay inert when the script runs."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from fleet.models import ControllerSettings, Detach, Host, Op, Privilege, Scope
from fleet.ops import builtin as ops
from fleet.ops import detach

HOST = Host(
    name="alpha",
    address="10.0.0.1",
    hostname="10.0.0.1",
    repo="/etc/nixos",
    branch="main",
    remote="origin",
    flake_attr="alpha-attr",
)


def test_pull_steps_exact_argv() -> None:
    assert ops.pull_steps(HOST) == [
        ["git", "-C", "/etc/nixos", "status", "--porcelain", "--branch", "--untracked-files=no"],
        ["git", "-C", "/etc/nixos", "fetch", "origin", "main"],
        ["git", "-C", "/etc/nixos", "merge", "--ff-only", "FETCH_HEAD"],
    ]
    script = ops.pull_script(HOST)
    for argv in ops.pull_steps(HOST):
        assert shlex.join(argv) in script


def test_rebuild_argv_exact() -> None:
    assert ops.rebuild_argv(HOST, "switch") == [
        "nixos-rebuild",
        "switch",
        "--flake",
        "/etc/nixos#alpha-attr",
    ]
    assert ops.rebuild_argv(HOST, "force-rebuild") == [
        "nixos-rebuild",
        "switch",
        "--flake",
        "/etc/nixos#alpha-attr",
        "--refresh",
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
    ]
    assert ops.rebuild_argv(HOST, "rollback") == ["nixos-rebuild", "switch", "--rollback"]
    with pytest.raises(ValueError):
        ops.rebuild_argv(HOST, "pull")


def test_flake_attr_defaults_to_name() -> None:
    h = Host(name="beta", address="b", hostname="b")
    assert ops.rebuild_argv(h, "switch")[-1] == "/etc/nixos#beta"


def test_privilege_strategy() -> None:
    sudo_host = Host(name="a", address="a", hostname="a", user="deploy", sudo=True)
    assert Privilege.of(sudo_host).argv(["systemctl", "restart", "x"]) == [
        "sudo",
        "-n",
        "systemctl",
        "restart",
        "x",
    ]
    assert Privilege.of(HOST).argv(["true"]) == ["true"]
    root_with_sudo = Host(name="a", address="a", hostname="a", user="root", sudo=True)
    assert Privilege.of(root_with_sudo).argv(["true"]) == ["true"]
    assert ops.pull_script(sudo_host).startswith("sudo -n sh -c ")


def test_test_script_commands() -> None:
    script = ops.test_script(HOST, 600)
    assert "d=/etc/nixos/hosts/alpha-attr/tests" in script
    assert "timeout 595 systemctl is-system-running --wait" in script
    assert "systemctl --failed --no-pager" in script


def test_restart_script_commands_and_deferral() -> None:
    h = Host(name="a", address="a", hostname="a", restart_units=("fleet.service", "nginx.service"))
    script = ops.restart_script(h)
    assert "systemctl show -p LoadState --value -- fleet.service" in script
    assert "systemctl restart -- nginx.service" in script
    deferred = ops.restart_script(h, deferred_units=("fleet.service",))
    assert "systemctl restart -- fleet.service" not in deferred
    assert "restart deferred" in deferred


def test_merge_pr_steps_exact_argv() -> None:
    s = ControllerSettings(git_name="bot", git_email="bot@x")
    g = ["git", "-C", "/r", "-c", "user.name=bot", "-c", "user.email=bot@x"]
    assert ops.merge_pr_steps(s, "/r", 42) == [
        [*g, "fetch", "origin", "main"],
        [*g, "merge", "--ff-only", "FETCH_HEAD"],
        [*g, "fetch", "origin", "refs/pull/42/head"],
        [*g, "merge", "--no-ff", "-m", "Merge pull request #42 (refs/pull/42/head)", "FETCH_HEAD"],
        [*g, "push", "origin", "HEAD:refs/heads/main"],
    ]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ((2, 8), ["flake", "lock", "/r", "--update-input", "fleet"]),
        ((2, 19), ["flake", "update", "fleet", "--flake", "/r"]),
        ((2, 24), ["flake", "update", "fleet", "--flake", "/r"]),
    ],
)
def test_flake_update_argv(version: tuple[int, int], expected: list[str]) -> None:
    argv = ops.flake_update_argv(ControllerSettings(), "/r", version)
    assert argv == ["nix", "--extra-experimental-features", "nix-command flakes", *expected]


def test_bump_flake_commit_steps() -> None:
    steps = ops.bump_flake_steps(ControllerSettings(git_name="n", git_email="e"), "/r", (2, 8))
    assert steps["commit"][1][-4:] == ["-m", "flake.lock: update fleet", "--", "flake.lock"]
    assert steps["commit"][2][-3:] == ["push", "origin", "HEAD:refs/heads/main"]


def test_user_op_placeholders_are_quoted() -> None:
    op = Op("smoke", "", command="curl -fsS http://{address}/ && echo {name} {repo}", builtin=False)
    h = Host(name="a", address="x; touch /tmp/pwned", hostname="x", repo="/r r")
    assert ops.user_op_script(op, h) == ("curl -fsS http://'x; touch /tmp/pwned'/ && echo a '/r r'")


def test_detached_launch_modes() -> None:
    argv = ops.rebuild_argv(HOST, "switch")
    auto = detach.launch_script(HOST, "/run/fleet/r1/switch.1", argv, unit="fleet-r1-switch-1")
    assert "[ -d /run/systemd/system ]" in auto
    assert "systemd-run --quiet --collect --unit=fleet-r1-switch-1 --service-type=exec" in auto
    assert "nixos-rebuild switch --flake '/etc/nixos#alpha-attr'" in auto
    setsid = detach.launch_script(HOST, "/d", argv, unit="u", detach=Detach.SETSID)
    assert "if false; then" in setsid
    forced = detach.launch_script(HOST, "/d", argv, unit="u", detach=Detach.SYSTEMD_RUN)
    assert "if true; then" in forced


# -- hostile values, executed for real in a local shell ----------------------------------------

PAYLOADS = [
    "; touch {canary}",
    "$(touch {canary})",
    "`touch {canary}`",
    "'; touch {canary}; '",
    '"; touch {canary}; "',
    "\n touch {canary}\n",
    "-x; touch {canary}",
    "ünïcödé $(touch {canary})",
]


def _run(script: str, cwd: Path) -> None:
    subprocess.run(["sh", "-c", script], cwd=cwd, capture_output=True, timeout=20, check=False)


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("field", ["repo", "branch", "remote", "flake_attr", "system_profile"])
def test_hostile_host_values_stay_inert(tmp_path: Path, payload: str, field: str) -> None:
    canary = tmp_path / "CANARY"
    value = payload.format(canary=canary)
    if field in ("repo", "system_profile"):
        value = str(tmp_path / value.lstrip("/"))
    fields = {"repo": str(tmp_path), field: value}
    host = Host(name="a", address="a", hostname="a", **fields)  # type: ignore[arg-type]
    scripts = [
        ops.pull_script(host),
        ops.test_script(host, 10),
        detach.launch_script(host, str(tmp_path / "run"), ["true"], unit="u", detach=Detach.SETSID),
        detach.finish_script(host, str(tmp_path / "run")),
        ops.j(ops.rebuild_argv(host, "switch")).replace("nixos-rebuild", "true", 1),
    ]
    for script in scripts:
        _run(script, tmp_path)
    assert not canary.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_unit_and_placeholders(tmp_path: Path, payload: str) -> None:
    canary = tmp_path / "CANARY"
    value = payload.format(canary=canary)
    host = Host(name="a", address=value, hostname="a", restart_units=(value,), repo=value)
    op = Op("u", "", scope=Scope.HOST, command="echo {address} {repo} {name}", builtin=False)
    _run(ops.user_op_script(op, host), tmp_path)
    _run(ops.restart_script(host).replace("systemctl", "true"), tmp_path)
    assert not canary.exists()


def test_host_script_is_the_one_dispatch_for_scripted_ops() -> None:
    registry = ops.OpRegistry.with_builtins()
    assert ops.host_script(registry.get("pull"), HOST) == ops.pull_script(HOST)
    assert ops.host_script(registry.get("test"), HOST) == ops.test_script(HOST, 600)
    assert ops.host_script(registry.get("restart"), HOST) == ops.restart_script(HOST)
    for op_id in ops.DETACHED_OPS:
        with pytest.raises(ValueError):
            ops.host_script(registry.get(op_id), HOST)
