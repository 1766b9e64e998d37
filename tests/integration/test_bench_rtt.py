"""bench/rtt.py puts 2 real sshd hosts behind the delay proxy and prints a table per RTT.

fleet connects through the proxy with strict host key checking (known_hosts keyed by the
proxy's [address]:port), so a run that completes proves the hosts' files point there; the
round trips come from the proxy's counters. No speed is asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.harness import ClientKey

ROOT = Path(__file__).resolve().parents[2]


def test_rtt_bench_runs_fleet_and_the_floor_through_the_proxy(
    tmp_path: Path, client_key: ClientKey
) -> None:
    del client_key  # requested for its check that sshd, root and git are there
    argv = [
        sys.executable, str(ROOT / "bench" / "rtt.py"), "--hosts", "2", "--rtt", "0,10",
        "--workloads", "zero", "--repeat", "1", "--no-write",
        "--tools", "fleet-lockstep,floor-shell-lockstep", "--workdir", str(tmp_path / "rtt"),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for rtt in ("0", "10"):
        assert any(ln.startswith(f"RTT {rtt} ms, 2 sshd hosts, zero workload") for ln in lines)
    rows = [ln.split() for ln in lines if ln.startswith(("fleet lockstep ", "floor shell "))]
    assert len(rows) == 4, proc.stdout
    for row in rows:
        words = row[2:] if row[0] == "fleet" else row[3:]
        round_trips, connections = float(words[3]), float(words[4])
        # one connection per host; at least TCP + the SSH set-up + one per op
        assert connections == 1.0 and round_trips >= 8, row
