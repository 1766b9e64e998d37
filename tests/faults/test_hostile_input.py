"""Hostile values in fleet.toml and on the command line.

Every string field (and every name) of fleet.toml, and every string argument of the CLI, is
tried with every payload: shell metacharacters (`;`, `$(...)`, backticks, quotes, newlines),
a leading `-`, a very long string, non-ASCII and bidi characters, NUL, path traversal and
format-string tricks. Each is refused with one clear line naming the key (fleet.toml: exit 2),
or, for the few free-text fields, accepted and then passed safely: used as one argv element
and never through a shell. A canary file that any of the payloads would create if a shell ran
it must not appear, on the controller or on any host.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.cli.app import main
from fleet.config.inventory import parse_inventory
from fleet.errors import ConfigError
from tests.faults.conftest import assert_clean_error, run_json, user_ops
from tests.integration.harness import FleetFactory, TestFleet, git, toml_table, toml_value

CANARY = "fleet-canary"  # the file every payload tries to create


def payloads(target: str) -> dict[str, str]:
    """Each payload, aimed at creating `target` (an absolute path) if a shell ever ran it."""
    touch = f"touch {target}"
    return {
        "semicolon": f"x;{touch}",
        "subshell": f"$({touch})",
        "backticks": f"`{touch}`",
        "single quotes": f"x'; {touch}; '",
        "double quotes": f'x"; {touch}; "',
        "newline": f"x\n{touch}",
        "carriage return": f"x\r{touch}",
        "leading dash": f"-oProxyCommand={touch}",
        "long": "a" * 5000,
        "non-ascii": "hôst-名前",
        "bidi override": f"x\u202e;{touch}",
        "nul": f"x\x00{touch}",
        "traversal": f"../../../..{target}",
        "glob": "*",
        "format": "{name.__class__}{0}",
        "empty": "",
        "space": f"a b {touch}",
    }


# (table, key) of every string a fleet.toml may hold; "<name>" is the table's own name
BASE: dict[str, dict[str, Any]] = {
    "ssh": {"identity_file": "/tmp/id", "known_hosts": ["/tmp/kh"], "host_key_policy": "strict"},
    "defaults": {"user": "root"},
    "controller": {"repo": "/tmp/controller"},
    "hosts.web1": {"address": "127.0.0.2"},
    "ops.hello": {"command": "echo {name}", "description": "says hello"},
    "pipelines.p": {"ops": ["hello"], "description": "a pipeline"},
}
HOST_STRINGS = (
    *("user", "repo", "remote", "branch", "flake_attr", "system_profile", "run_dir"),
    *("identity_file", "detach"),
)
CONTROLLER_STRINGS = ("repo", "flake_input", "pr_ref", "git_name", "git_email", "remote", "branch")
FIELDS: tuple[tuple[str, str], ...] = (
    *(("hosts.web1", key) for key in ("address", *HOST_STRINGS, "tags", "restart_units", "port")),
    *(("defaults", key) for key in (*HOST_STRINGS, "restart_units")),
    *(("ssh", key) for key in ("identity_file", "known_hosts", "host_key_policy")),
    *(("controller", key) for key in CONTROLLER_STRINGS),
    ("ops.hello", "description"),
    ("ops.hello", "scope"),
    ("ops.hello", "timeout"),
    ("pipelines.p", "ops"),
    ("pipelines.p", "description"),
    ("hosts", "<name>"),
    ("ops", "<name>"),
    ("pipelines", "<name>"),
)
LISTS = {"tags", "restart_units", "known_hosts", "ops"}
FREE_TEXT = {
    ("ops.hello", "description"),
    ("pipelines.p", "description"),
    ("controller", "git_name"),
}
NEVER_IN_FREE_TEXT = {"newline", "carriage return", "nul", "bidi override", "long"}


def render(tables: dict[str, dict[str, Any]]) -> str:
    return "\n".join(toml_table(name, values) for name, values in tables.items())


def hostile_config(table: str, key: str, value: str) -> str:
    tables = copy.deepcopy(BASE)
    if key == "<name>":  # the payload names a host, an op or a pipeline
        own = next(t for t in tables if t.startswith(table + "."))
        tables[f"{table}.{toml_value(value)}"] = tables.pop(own)
        if table == "ops":
            tables["pipelines.p"]["ops"] = [value]
    else:
        tables[table][key] = [value] if key in LISTS else value
    return render(tables)


def test_every_field_with_every_payload_is_refused_or_harmless(tmp_path: Path) -> None:
    target = str(tmp_path / CANARY)
    accepted: set[tuple[str, str, str]] = set()
    for table, key in FIELDS:
        for label, payload in payloads(target).items():
            text = hostile_config(table, key, payload)
            try:
                inventory = parse_inventory(text, path="fleet.toml")
            except ConfigError as error:
                message = str(error)
                assert message.startswith("fleet.toml: "), message
                assert message.isprintable(), (table, key, label, message)  # one safe line
                assert len(message) < 400, (table, key, label, message)
                where = table if key == "<name>" else f"{table}.{key}"
                assert where.split(".")[0] in message, (table, key, label, message)
                continue
            accepted.add((table, key, label))
            assert (table, key) in FREE_TEXT, (table, key, label)
            assert label not in NEVER_IN_FREE_TEXT, (table, key, label)
            assert inventory.hosts  # parsed whole
    # the free-text fields keep what a person may write there (quotes, $, non-ASCII, ...)
    for table, key in FREE_TEXT:
        assert (table, key, "subshell") in accepted
        assert (table, key, "non-ascii") in accepted
    assert not Path(target).exists()


@pytest.mark.parametrize(
    "command",
    [
        "echo {name:>999999999}",  # a format spec: a huge allocation when rendered
        "echo {name!r}",  # a conversion: changes how the value is quoted
        "echo {name.__class__}",
        "echo {0}",
        "echo {}",
        "echo {password}",
        "echo {name",
        "echo name}",
    ],
)
def test_hostile_placeholders_of_user_ops_are_refused(command: str) -> None:
    tables = copy.deepcopy(BASE)
    tables["ops.hello"]["command"] = command
    with pytest.raises(ConfigError) as caught:
        parse_inventory(render(tables), path="fleet.toml")
    assert str(caught.value).startswith("fleet.toml: ops.hello.command: ")
    assert str(caught.value).isprintable()


def canaries(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob(f"*{CANARY}*") if p.name == CANARY]


def call_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def cli_env(fleet_factory: FleetFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestFleet]:
    fleet = fleet_factory(1)
    for key, value in fleet.cli_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(fleet.root)
    yield fleet


def test_every_cli_argument_with_every_payload(
    cli_env: TestFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = cli_env
    code, run, err = run_json(fleet, "op", "pull")
    assert code == 0, err
    run_id = run["run_id"]
    config = ["--config", str(fleet.config)]
    logins = fleet["host1"].log_path.read_text().count("Accepted publickey")
    target = fleet.root / CANARY
    for label, payload in payloads(str(target)).items():
        if "\x00" in payload:  # no argv can hold a NUL
            continue
        for args in (
            ["run", payload],
            ["op", payload],
            ["do-all", "--on", payload],
            ["do-all", "--pr", payload],
            ["merge-deploy", "--pr", payload],
            ["do-all", "--max-fail", payload],
            ["do-all", "--max-parallel", payload],
            ["do-all", "--mode", payload],
            ["status", payload],
            ["logs", payload],
            ["logs", run_id, "--host", payload],
            ["retry", payload],
            ["prune", "--older-than", payload],
        ):
            if args == ["do-all", "--on", "*"]:  # a valid selector: every host
                continue
            code, out, err = call_main([*config, *args], capsys)
            if args == ["status", ""]:  # no run id: the latest run, as `fleet status`
                assert code == 0, err
                continue
            assert code == 2, (args, code, out, err)
            assert "Traceback" not in err, (args, err)
            lines = err.strip().splitlines()
            assert all(line.isprintable() for line in lines), (args, err)
            if err.startswith("fleet: error: "):  # fleet's own errors: one line
                assert len(lines) == 1, (args, err)
            else:  # click's usage errors: the usage, a hint, the error
                assert lines[-1].startswith("Error: "), (args, err)
        config_path = str(fleet.root / "configs" / payload)
        code, out, err = call_main(["--config", config_path, "hosts"], capsys)
        assert code == 2 and err.startswith("fleet: error: "), (label, err)
        assert len(err.strip().splitlines()) == 1 and err.strip().isprintable(), (label, err)
    assert fleet["host1"].log_path.read_text().count("Accepted publickey") == logins  # no run
    assert not target.exists()
    assert canaries(fleet.root) == []


def test_accepted_free_text_is_passed_as_one_argument(fleet_factory: FleetFactory) -> None:
    """git_name is free text (a person's name): it reaches git as one argv element, whole."""
    fleet = fleet_factory(2)
    target = fleet.root / CANARY
    touch = f"touch {CANARY}"  # (relative: wherever a shell would run it, under the root)
    name = f"Zoë $({touch}) `{touch}` ;{touch}; 'q' \"dq\" -x 名前"
    description = f"deploy $({touch}) `{touch}` ;{touch}"
    deploy = {"ops": ["merge-pr", "pull"], "description": description}
    fleet.write_config(controller={"git_name": name}, extra=toml_table("pipelines.deploy", deploy))
    fleet.push_pr(3, {"hosts/host1/marker": "from pr 3\n"})
    code, data, err = run_json(fleet, "run", "deploy", "--pr", "3")
    assert code == 0, (data, err)
    author = git("log", "-1", "--format=%an|%cn", "main", cwd=fleet.upstream)
    assert author == f"{name}|{name}"  # exactly the value, not a word of it run
    listing = fleet.run_cli(["pipelines"])
    assert listing.returncode == 0 and "deploy $(" in listing.stdout
    assert not target.exists()
    assert canaries(fleet.root) == []
    for host in fleet.hosts.values():
        assert canaries(host.root) == []


@pytest.mark.parametrize("field", ["branch", "repo", "flake_attr", "restart_units", "user"])
def test_a_hostile_config_stops_before_any_host_is_contacted(
    fleet_factory: FleetFactory, field: str
) -> None:
    fleet = fleet_factory(1)
    target = fleet.root / CANARY
    value: str | list[str] = f"$(touch {target})"
    fleet.write_config(hosts={"host1": {field: [value] if field == "restart_units" else value}})
    proc = fleet.run_cli(["do-all"])
    assert_clean_error(proc, f"hosts.host1.{field}")
    assert "Accepted publickey" not in fleet["host1"].log_path.read_text()
    assert not target.exists()


def test_values_that_mean_something_to_a_shell_are_quoted(fleet_factory: FleetFactory) -> None:
    """Values that pass validation but mean something to a shell (`,` `@` `%` `=` `+` `.`)
    are quoted in every command fleet renders (`--dry-run` shows them) and reach the host
    whole, also through a user op's placeholders."""
    fleet = fleet_factory(1)
    repo, attr, branch = "/srv/nix,cfg@1%2=3+4", "web.prod-1_x", "release/1.2-x"
    show = "printf '[%s]\\n' {name} {address} {repo} {branch} {flake_attr}"
    fleet.write_config(
        hosts={"host1": {"repo": repo, "flake_attr": attr, "branch": branch}},
        extra=user_ops(show=show),
    )
    proc = fleet.run_cli(["do-all", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("nixos-rebuild switch"))
    assert shlex.split(line.partition("#")[0] + "#" + line.partition("#")[2].split()[0]) == [
        "nixos-rebuild", "switch", "--flake", f"{repo}#{attr}",
    ]  # fmt: skip
    code, data, err = run_json(fleet, "op", "show")
    assert code == 0, (data, err)
    out = Path(data["hosts"]["host1"]["ops"][0]["log"]).read_text()
    address = fleet["host1"].address
    assert out == f"[host1]\n[{address}]\n[{repo}]\n[{branch}]\n[{attr}]\n"
