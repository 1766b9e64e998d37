"""A fresh, unpinned install (the newest releases pyproject.toml allows) prints only fleet's own
lines on stderr: no third-party warning before a one-line error, in the demo, or anywhere else.

This installs from the package registry, as a user's `pip install .` does; CI reaches it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIRD_PARTY_NOISE = ("Warning", "warnings.warn", "Traceback")


@pytest.fixture(scope="module")
def unpinned_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv with `pip install --upgrade <checkout>`: fleet and the newest of its dependencies."""
    venv = tmp_path_factory.mktemp("unpinned") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin/python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    proc = subprocess.run(
        [*pip, "install", "--upgrade", str(ROOT)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    yield venv / "bin/fleet"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "PYTHON"))}
    return {**env, "HOME": str(home), "NO_COLOR": "1", "TMPDIR": str(home)}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_demo_on_the_newest_releases_prints_nothing_on_stderr(
    unpinned_fleet: Path, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [str(unpinned_fleet), "demo", "--hosts", "3"],
        capture_output=True, text=True, timeout=300, env=_env(tmp_path), cwd=tmp_path,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "(do-all): PARTIAL" in proc.stdout
    for noise in THIRD_PARTY_NOISE:
        assert noise not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line]
    assert lines[0].startswith("starting 3 simulated host(s) in "), proc.stderr
    assert lines[1:] == ["pushed a commit that breaks host host-02; running do-all"]


def test_a_failing_do_all_on_the_newest_releases_prints_only_fleets_lines(
    unpinned_fleet: Path, tmp_path: Path
) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'[defaults]\nport = {_closed_port()}\n\n[hosts.web-1]\naddress = "127.0.0.1"\n'
    )
    proc = subprocess.run(
        [str(unpinned_fleet), "--config", str(config), "do-all"],
        capture_output=True, text=True, timeout=300, env=_env(tmp_path), cwd=tmp_path,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "web-1" in proc.stdout + proc.stderr
    for noise in THIRD_PARTY_NOISE:
        assert noise not in proc.stderr, proc.stderr
