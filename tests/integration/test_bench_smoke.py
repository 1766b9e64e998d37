"""The benchmark harness (bench/run.py) starts and prints a table, on 3 real sshd hosts.

Only fleet and the floor script run here (Ansible and pyinfra live in bench/.venv, which the
test run does not need); the full benchmark is run by hand (docs/benchmarks.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import ClientKey

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_fleet_and_the_floor_and_prints_a_table(
    tmp_path: Path, client_key: ClientKey
) -> None:
    del client_key  # requested for its check that sshd, root and git are there
    argv = [
        sys.executable, str(ROOT / "bench" / "run.py"), "--hosts", "3", "--workloads", "zero",
        "--tools", "fleet-lockstep,floor-shell-lockstep", "--no-write",
        "--workdir", str(tmp_path / "bench"),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "3 real sshd hosts, zero-duration workload" in out
    header = next(line for line in out.splitlines() if line.startswith("tool "))
    assert "wall s" in header and "CPU ms/host/op" in header and "RSS MB" in header
    for tool in ("fleet lockstep", "floor shell lockstep"):
        row = next(line for line in out.splitlines() if line.startswith(tool + " "))
        wall = float(row[len(tool) :].split()[0])
        assert 0 < wall < 60, row
    assert re.search(r"fleet lockstep: .*vs floor shell lockstep", out), out
