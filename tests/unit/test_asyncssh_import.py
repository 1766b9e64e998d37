"""fleet imports asyncssh in one place, and that import prints no third-party warning."""

from __future__ import annotations

import subprocess
import sys


def _import_with_warnings_as_errors(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_fleets_asyncssh_import_raises_no_warning() -> None:
    proc = _import_with_warnings_as_errors("fleet.transport._asyncssh")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_the_filter_is_exactly_asyncssh_and_that_category() -> None:
    """Other warnings still reach the user: the filter is scoped to the import alone."""
    script = (
        "import warnings\n"
        "import fleet.transport._asyncssh\n"
        "from cryptography.utils import CryptographyDeprecationWarning\n"
        "warnings.warn('later', CryptographyDeprecationWarning)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "CryptographyDeprecationWarning: later" in proc.stderr


def test_no_module_of_fleet_imports_asyncssh_itself() -> None:
    from pathlib import Path

    import fleet

    root = Path(fleet.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name != "_asyncssh.py"
        and any(
            line.startswith(("import asyncssh", "from asyncssh"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
