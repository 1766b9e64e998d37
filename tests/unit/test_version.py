"""The version is written once, in pyproject.toml; fleet.__version__ and the CLI read it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import fleet

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_comes_from_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert fleet.__version__ == project["version"]
    proc = subprocess.run(
        [sys.executable, "-m", "fleet", "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert proc.stdout.strip() == f"fleet, version {project['version']}"
