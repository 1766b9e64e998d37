"""What each test needs beyond a build sandbox, as pytest marks, set in one place.

The Nix package's check phase deselects these marks (nix/check-phase.nix), and
scripts/check-sandboxed runs what is left the way that build sandbox would: as a non-root user,
HOME unset, no /run, loopback only, the check inputs alone on PATH. A test that needs more than
that gets a mark here (by the fixtures it uses or the file it is in), or in its own file when the
need is its own (`many_processes`, `root`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# The sshd fleets of tests/integration/harness: OpenSSH's sshd, started as root.
MARKS_BY_FIXTURE = {
    "client_key": ("sshd", "root"),
    "fleet_factory": ("sshd", "root"),
    "fleet3": ("sshd", "root"),
}
# Whole files and folders.
MARKS_BY_PATH = {
    "browser": ("chromium", "sshd", "root"),
    "integration/test_ssh_transport.py": ("sshd", "root"),
    "integration/test_unpinned_install.py": ("network",),
}


def marks_of(item: pytest.Item) -> set[str]:
    marks: set[str] = set()
    for fixture in getattr(item, "fixturenames", ()):
        marks.update(MARKS_BY_FIXTURE.get(fixture, ()))
    relative = Path(item.path).resolve().relative_to(TESTS)
    for path, path_marks in MARKS_BY_PATH.items():
        if relative == Path(path) or Path(path) in relative.parents:
            marks.update(path_marks)
    return marks


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for mark in sorted(marks_of(item)):
            item.add_marker(getattr(pytest.mark, mark))
