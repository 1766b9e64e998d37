"""Fixtures of the fault-injection suite: the integration tests' sshd fleets, plus helpers.

Every test here runs fleet (mostly the real CLI, in its own process) against real sshd hosts
(tests/integration/harness/), injects one fault, and then checks four things: the run's
status, each host's status and op statuses, what the state store holds, and that the other
hosts were not affected.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fleet.state import StateStore
from tests.integration.conftest import client_key, fleet3, fleet_factory  # noqa: F401
from tests.integration.harness import TestFleet, wait_until

# ---------------------------------------------------------------------------------------------
# Running fleet


def parse_json(proc: subprocess.CompletedProcess[str] | tuple[str, str]) -> dict[str, Any]:
    out, err = (proc.stdout, proc.stderr) if not isinstance(proc, tuple) else proc
    try:
        data: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not JSON ({exc}):\n{out[-2000:]}\n{err[-4000:]}") from exc
    return data


def run_json(
    fleet: TestFleet, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> tuple[int, dict[str, Any], str]:
    """`fleet ARGS... --json` to completion: exit code, the run's JSON, stderr."""
    proc = fleet.run_cli([*args, "--json"], env=env, timeout=timeout)
    return proc.returncode, parse_json(proc), proc.stderr


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, dict[str, Any], str]:
    """Wait for a `spawn_cli([... --json])` process: exit code, the run's JSON, stderr."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, parse_json((out, err)), err


def statuses(data: Mapping[str, Any], host: str) -> list[str]:
    return [o["status"] for o in data["hosts"][host]["ops"]]


def op(data: Mapping[str, Any], host: str, op_id: str) -> dict[str, Any]:
    ops: list[dict[str, Any]] = data["hosts"][host]["ops"]
    return next(o for o in ops if o["op"] == op_id)


def recorded(state_dir: Path, run_id: str) -> dict[str, Any]:
    """The run as the state store holds it (opened afresh, as the next fleet process would)."""
    with StateStore(state_dir) as store:
        return store.get_run(run_id).to_json()


def locked_hosts(state_dir: Path) -> dict[str, str]:
    with StateStore(state_dir) as store:
        return store.locked_hosts()


def assert_complete(data: Mapping[str, Any], hosts: Sequence[str], n_ops: int) -> None:
    """The hosts a fault did not touch: COMPLETE, every op SUCCESS, no error."""
    for name in hosts:
        host = data["hosts"][name]
        assert host["status"] == "COMPLETE", (name, host)
        assert statuses(data, name) == ["SUCCESS"] * n_ops, (name, host)
        assert host["failed_op"] is None
        assert all(o["error"] is None for o in host["ops"])


def assert_clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 and one line `fleet: error: ...` naming each needle; no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fleet: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def accepted_logins(fleet: TestFleet, name: str | None = None) -> int:
    """How many SSH logins the sshd of host `name` (default: of every host) has accepted."""
    hosts = [fleet[name]] if name else list(fleet.hosts.values())
    return sum(h.log_path.read_text(errors="replace").count("Accepted publickey") for h in hosts)


def log_of(fleet: TestFleet, host: str, op_id: str, state_dir: Path | None = None) -> bytes:
    """The newest log of `op_id` on `host` in the state dir (b"" when there is none yet)."""
    logs = sorted((state_dir or fleet.state_dir).glob(f"logs/*/{host}/{op_id}.log"))
    return logs[-1].read_bytes() if logs else b""


def wait_log(
    fleet: TestFleet,
    host: str,
    op_id: str,
    text: bytes,
    *,
    state_dir: Path | None = None,
    timeout: float = 30,
) -> None:
    wait_until(
        lambda: text in log_of(fleet, host, op_id, state_dir),
        timeout,
        f"{text!r} in the {op_id} log of {host}",
    )


def user_ops(**commands: str | tuple[str, float]) -> str:
    """`[ops.ID]` tables: a command, or (command, timeout)."""
    out = []
    for op_id, spec in commands.items():
        command, timeout = spec if isinstance(spec, tuple) else (spec, 60.0)
        out.append(f"[ops.{op_id}]\ncommand = {json.dumps(command)}\ntimeout = {timeout:g}\n")
    return "\n".join(out)


def pipeline(name: str, *ops: str) -> str:
    return f"[pipelines.{name}]\nops = {json.dumps(list(ops))}\n"


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
