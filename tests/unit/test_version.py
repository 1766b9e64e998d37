"""The version is written once, in pyproject.toml; fleet.__version__ and the CLI read it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

import fleet
from fleet.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_comes_from_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert fleet.__version__ == project["version"]
    result = CliRunner().invoke(main, ["--version"])
    assert result.output.strip() == f"fleet, version {project['version']}"
