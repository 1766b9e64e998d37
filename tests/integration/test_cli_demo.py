"""`fleet demo`: a simulated fleet, driven through the real CLI, with no sshd and no root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_fleet_demo_runs_do_all_and_shows_the_broken_host(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "NO_COLOR": "1", "TMPDIR": str(tmp_path)}
    env.pop("FLEET_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "fleet", "demo", "--hosts", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(do-all): PARTIAL  2 complete, 1 failed of 3 hosts" in proc.stdout
    assert "host-02  FAILED    ok    FAIL    skip  switch" in proc.stdout
    assert "assertion failed" in proc.stdout
    assert not list(tmp_path.glob("fleet-demo-*")), "the demo directory was not removed"
