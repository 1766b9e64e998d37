"""Running Nix's evaluator for the tests of the Nix files (flake.nix, flake.lock, nix/).

Nothing here builds: this machine and CI have no binary cache. `nix-instantiate --parse` needs
nothing else (Debian 12's Nix 2.8 does it); evaluating the module or the flake needs nixpkgs'
lib, which the tests find through FLEET_NIXPKGS_LIB, and a Nix that can evaluate it (2.26:
scripts/check-flake puts scripts/modern-nix's first on PATH). They evaluate against the stand-in
nixpkgs of nixpkgs/, copied with that lib into a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LIB_VARIABLE = "FLEET_NIXPKGS_LIB"
# --read-write-mode: the stand-in nixpkgs and the package's source go into the store, as they
# do in a real evaluation (plain --eval only computes their store paths).
EVAL = ["--eval", "--strict", "--json", "--read-write-mode"]


def nix_instantiate(
    args: Sequence[str], *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run nix-instantiate in the repository; fail (not skip) when it is missing."""
    program = shutil.which("nix-instantiate")
    if program is None:
        pytest.fail("nix-instantiate is not installed (Debian: apt-get install nix-bin)")
    return subprocess.run(
        [program, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def nix_eval(file: Path, *args: str) -> Any:
    """`nix-instantiate --eval --strict --json FILE ARGS...` as Python data."""
    result = nix_instantiate([*EVAL, str(file), *args])
    if result.returncode != 0:
        pytest.fail(f"evaluating {file.relative_to(ROOT)} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def nix_eval_expression(expression: str) -> Any:
    """`nix-instantiate --eval --strict --json -E EXPRESSION` as Python data."""
    result = nix_instantiate(["--eval", "--strict", "--json", "-E", expression])
    if result.returncode != 0:
        pytest.fail(f"evaluating {expression} failed:\n{result.stderr}")
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def nixpkgs_lib() -> Path:
    """The `lib` directory of nixpkgs (FLEET_NIXPKGS_LIB: that directory or a checkout of
    nixpkgs or of nix-community/nixpkgs.lib that holds it)."""
    value = os.environ.get(LIB_VARIABLE)
    if not value:
        pytest.skip(
            f"{LIB_VARIABLE} is not set: evaluating nix/module.nix and flake.nix needs nixpkgs' "
            "lib (a checkout of nix-community/nixpkgs.lib, or nixpkgs); the Nix build of the "
            "package sets it"
        )
    path = Path(value)
    for candidate in (path / "lib", path):
        if (candidate / "default.nix").is_file() and (candidate / "modules.nix").is_file():
            return candidate.resolve()
    pytest.fail(f"{LIB_VARIABLE}={value} holds no nixpkgs lib (lib/default.nix, lib/modules.nix)")


@pytest.fixture(scope="session")
def stand_in_nixpkgs(nixpkgs_lib: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/nix/nixpkgs with nixpkgs' real lib in it: what `nixpkgs` is to the evaluations."""
    return make_stand_in_nixpkgs(nixpkgs_lib, tmp_path_factory.mktemp("stand-in") / "nixpkgs")


def make_stand_in_nixpkgs(lib: Path, target: Path) -> Path:
    shutil.copytree(HERE / "nixpkgs", target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(lib, target / "lib")
    for path in target.rglob("*"):  # the lib may be a read-only checkout
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return target


def nixpkgs_arg(nixpkgs: Path) -> list[str]:
    """The `--arg nixpkgs ...` of the evaluation helpers in tests/nix."""
    return ["--arg", "nixpkgs", str(nixpkgs)]
