"""Every Nix file of the repository parses, and every path it names exists.

nix-instantiate --parse checks syntax only; tests/nix/test_module_eval.py evaluates. The VM
tests' Python scripts and the shell script that the config flake carries are checked here too:
nothing runs them on this machine.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.nix.conftest import ROOT, nix_instantiate

SKIP_DIRS = {
    ".git",
    ".venv",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "build",
    "dist",
}
# Paths that a Nix file may name without their existing here.
MAY_BE_MISSING = {
    # lib.fileset.maybeMissing in nix/package.nix
    ROOT / "README.md",
    # written into the VM tests' config repository by nix/tests/common.nix
    ROOT / "nix" / "tests" / "config" / "hosts.json",
    # nixpkgs' lib, copied beside the stand-in nixpkgs to evaluate it (tests/nix/conftest.py)
    ROOT / "tests" / "nix" / "nixpkgs" / "lib",
}


def nix_files() -> list[Path]:
    found = []
    for path in sorted(ROOT.rglob("*.nix")):
        relative = path.relative_to(ROOT)
        if SKIP_DIRS.isdisjoint(relative.parts[:-1]) and not relative.parts[0].startswith("result"):
            found.append(path)
    return found


def test_the_nix_files_are_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in nix_files()}
    assert {
        "flake.nix",
        "nix/package.nix",
        "nix/module.nix",
        "nix/tests/default.nix",
        "nix/tests/common.nix",
        "nix/tests/pipeline.nix",
        "nix/tests/dashboard.nix",
        "nix/tests/config/flake.nix",
        "nix/tests/config/configurations.nix",
        "nix/tests/config/target.nix",
        "nix/check-phase.nix",
        "tests/nix/nixpkgs/default.nix",
        "tests/nix/nixpkgs/flake.nix",
    } <= names


@pytest.mark.parametrize("path", nix_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_parses(path: Path) -> None:
    result = nix_instantiate(["--parse", str(path)])
    assert result.returncode == 0, result.stderr
    # The parser prints path literals resolved: each must exist.
    for named in set(re.findall(re.escape(str(ROOT)) + r"(?:/[A-Za-z0-9._+-]+)*", result.stdout)):
        target = Path(named)
        assert target.exists() or target in MAY_BE_MISSING, (
            f"{path.relative_to(ROOT)} names {target.relative_to(ROOT)}, which does not exist"
        )


@pytest.mark.parametrize("script", ["pipeline.py", "dashboard.py"])
def test_the_vm_test_scripts_compile(script: str) -> None:
    # The driver runs the prelude written by nix/tests/common.nix, common.py, then the script.
    tests = ROOT / "nix" / "tests"
    source = (tests / "common.py").read_text() + (tests / script).read_text()
    compile(source, f"nix/tests/{script}", "exec")


def test_the_config_flakes_shell_script_parses() -> None:
    script = ROOT / "nix" / "tests" / "config" / "marker-test.sh"
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
