"""The benchmark harness (bench/run.py) starts and prints a table, on 3 real sshd hosts.

Only fleet and the floor script run here (Ansible and pyinfra live in bench/.venv, which the
test run does not need); the full benchmark is run by hand (docs/benchmarks.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.profile import PARTS, WAITING, part_of
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


def test_the_profiles_parts_follow_the_code_a_sample_ran_for() -> None:
    """bench/profile.py sums pyinstrument's samples by part of the controller: a C function
    counts for the Python code that called it, stdlib code for whoever called it, and the
    event loop's own work and its waits are parts of their own."""
    venv = "/v/lib/python3.11/site-packages"
    lib = "/py/lib/python3.11"
    loop = f"_run_once\0{lib}/asyncio/base_events.py\0001845"
    run = f"run_plan\0{ROOT}/fleet/cli/run.py\000154"
    cases = {
        (run, loop, f"select\0{lib}/selectors.py\000468", "epoll.poll\0<built-in>\0000"): WAITING,
        (run, loop, f"_recv_packet\0{venv}/asyncssh/connection.py\0001651"): PARTS[1],
        (
            run,
            loop,
            f"_record\0{ROOT}/fleet/state/recorder.py\00092",
            "Connection.execute\0<built-in>\0000",
        ): PARTS[3],
        (
            run,
            loop,
            f"open\0{ROOT}/fleet/state/logs.py\00088",
            f"open\0{lib}/pathlib.py\0001036",
        ): PARTS[3],
        (run, loop, f"_attempt\0{ROOT}/fleet/run/executor.py\000308"): PARTS[4],
        (
            run,
            loop,
            f"write\0{lib}/asyncio/selector_events.py\0001037",
            "socket.send\0<built-in>\0000",
        ): PARTS[5],
        (run, loop, f"_call_soon\0{lib}/asyncio/base_events.py\000780"): PARTS[6],
        (
            run,
            "_find_and_load\0<frozen importlib._bootstrap>\0001165",
            f"<module>\0{venv}/asyncssh/x.py\0001",
        ): PARTS[0],
    }
    assert {stack: part_of(stack) for stack in cases} == cases
