"""The CLI's `--json` for a PARTIAL do-all, pinned byte for byte apart from ids, times and paths.

A hold-out check: a refactoring that changes no behaviour leaves this output unchanged. The
progress events on stderr interleave as the hosts go, so they are compared sorted;
the document on stdout is compared as printed. `FLEET_UPDATE_GOLDEN=1` rewrites the golden file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.integration.harness import TestFleet

GOLDEN = Path(__file__).parent / "golden" / "do_all_partial.txt"


def normalise(text: str, root: Path) -> str:
    text = text.replace(str(root), "<ROOT>")
    text = re.sub(r"\d{8}-\d{6}-[0-9a-f]+", "<RUN_ID>", text)
    text = re.sub(r'"\d{4}-\d\d-\d\dT[\d:.]+Z"', '"<TIME>"', text)
    text = re.sub(r'("duration": ?)[\d.e-]+', r'\1"<DURATION>"', text)
    text = re.sub(r'("pid": ?)\d+', r'\1"<PID>"', text)
    text = re.sub(r"pid \d+\)", "pid <PID>)", text)
    return text


def progress(stderr: str, root: Path) -> str:
    """The JSON progress events on stderr, sorted (hosts interleave as they go)."""
    lines = normalise(stderr, root).splitlines(keepends=True)
    return "".join(sorted(line for line in lines if line.startswith('{"event"')))


def test_partial_do_all_json_is_unchanged(fleet3: TestFleet) -> None:
    fleet3.break_host("host3")
    proc = fleet3.run_cli(["do-all", "--json"])
    assert proc.returncode == 3, proc.stderr
    got = progress(proc.stderr, fleet3.root) + "----\n" + normalise(proc.stdout, fleet3.root)
    if os.environ.get("FLEET_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()
