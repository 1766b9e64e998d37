# ruff: noqa: F821
# Helpers of fleet's VM tests. The test driver defines the machines (controller, target1, ...)
# and start_all/subtest; the prelude that nix/tests/common.nix writes before this defines
# TARGETS, ROUNDS (round -> tree of the config repository), MARKERS (round -> target ->
# marker) and SNAKEOIL_KEY.
import json
import shlex
from typing import Any

REPO_URL = "git@controller:config.git"
OPERATOR_CLONE = "/root/config"


def setup() -> str:
    """Serve the config repository from the controller, with its first round in it, and check
    it out into /etc/nixos on every target. Return the commit."""
    start_all()
    controller.wait_for_unit("sshd.service")
    controller.succeed(
        f"install -D -m 600 {SNAKEOIL_KEY} /root/.ssh/id_ecdsa",
        "runuser -u git -- env HOME=/srv/git"
        " git init --quiet --bare --initial-branch=main /srv/git/config.git",
        "git config --global user.name operator",
        "git config --global user.email operator@controller",
        f"git clone --quiet {REPO_URL} {OPERATOR_CLONE}",
    )
    commit = publish("initial", "The fleet's configuration", lock=True)
    for target in TARGETS:
        target.wait_for_unit("sshd.service")
        target.succeed(
            f"install -D -m 600 {SNAKEOIL_KEY} /root/.ssh/id_ecdsa",
            f"git clone --quiet {REPO_URL} /etc/nixos",
        )
    return commit


def publish(round_name: str, message: str, lock: bool = False) -> str:
    """Commit a round's tree of the config repository and push it. Return the commit."""
    git = f"git -C {OPERATOR_CLONE}"
    controller.succeed(
        f"cp -rT --no-preserve=mode {ROUNDS[round_name]} {OPERATOR_CLONE}",
        f"chmod +x {OPERATOR_CLONE}/hosts/*/tests/*",
        f"{git} add -A",
    )
    if lock:
        # nixpkgs is a path: input in the store; locking it needs no network.
        controller.succeed(f"cd {OPERATOR_CLONE} && nix flake lock && git add flake.lock")
    controller.succeed(
        f"{git} commit --quiet -m {shlex.quote(message)}",
        f"{git} push --quiet origin HEAD:main",
    )
    return controller.succeed(f"{git} rev-parse HEAD").strip()


def json_of(output: str) -> dict[str, Any]:
    """The JSON object that a command printed (the last one, if it printed lines of them)."""
    try:
        value = json.loads(output)
    except json.JSONDecodeError:
        objects = [line for line in output.splitlines() if line.startswith("{")]
        assert objects, f"no JSON object in:\n{output}"
        value = json.loads(objects[-1])
    assert isinstance(value, dict), value
    return value


def fleet_run(command: str, expect: int) -> dict[str, Any]:
    """Run `fleet COMMAND --json` on the controller, check its exit code, and return the run as
    `fleet status RUN_ID --json` shows it."""
    status, output = controller.execute(f"fleet {command} --json", timeout=1800)
    assert status == expect, f"fleet {command}: exit code {status}, expected {expect}:\n{output}"
    run_id = json_of(output)["run_id"]
    return json_of(controller.succeed(f"fleet status {shlex.quote(run_id)} --json"))


def op_statuses(run: dict[str, Any], host: str) -> dict[str, str]:
    return {op["op"]: op["status"] for op in run["hosts"][host]["ops"]}


def current_system(machine: Any) -> str:
    return str(machine.succeed("readlink -f /run/current-system").strip())


def checked_out(machine: Any) -> str:
    return str(machine.succeed("git -C /etc/nixos rev-parse HEAD").strip())


def marker(machine: Any) -> str | None:
    status, output = machine.execute("cat /etc/fleet-marker")
    return output.strip() if status == 0 else None


def assert_deployed(run: dict[str, Any], machine: Any, round_name: str, commit: str) -> None:
    """The machine pulled the commit, switched to its system and tested it, in this run."""
    host = run["hosts"][machine.name]
    assert host["status"] == "COMPLETE", f"{machine.name}: {json.dumps(host, indent=2)}"
    assert op_statuses(run, machine.name) == {
        "pull": "SUCCESS",
        "switch": "SUCCESS",
        "test": "SUCCESS",
    }, host
    assert checked_out(machine) == commit
    assert marker(machine) == MARKERS[round_name][machine.name]
    (switch,) = [op for op in host["ops"] if op["op"] == "switch"]
    assert switch["system_after"] == current_system(machine), switch
