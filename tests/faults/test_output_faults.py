"""Hostile output: an op that prints 50 MB, or bytes that are not UTF-8 and terminal escapes.

The controller streams output (its memory stays bounded), the log file holds every byte as
the host sent it, the store keeps a bounded tail, and what reaches the terminal is readable.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from fleet.state import TAIL_BYTES, StateStore
from tests.faults.conftest import assert_complete, op, parse_json, recorded, statuses, user_ops
from tests.integration.harness import FleetFactory, TestFleet

BIG = 50 * 1024 * 1024
BIG_COMMAND = (
    "seq -f '%.0f fleet output line, padded to be a bit longer than a short line' 1 900000"
    f" | head -c {BIG}"
)
# Runs fleet's CLI and reports the process's peak resident memory (VmHWM) on stderr at exit.
PEAK_RSS = """\
import atexit, sys
def report():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                sys.stderr.write("peak-rss-kb: " + line.split()[1] + "\\n")
atexit.register(report)
from fleet.cli import main
main(sys.argv[1:])
"""
# Not UTF-8, terminal escapes (clear screen, colours, a window title with BEL), a carriage
# return, a NUL, a very long line, and a last line without a newline.
GARBAGE = (
    "printf 'start \\377\\376 bad bytes\\n'; "
    "printf '\\033[2J\\033[31mred\\033[0m \\033]0;title\\007 \\r overwritten \\000 nul\\n'; "
    "head -c 20000 /dev/zero | tr '\\0' x; printf '\\n'; "
    "printf 'end \\200\\201 no newline at the end'"
)


def run_measured(fleet: TestFleet, *args: str) -> tuple[int, dict[str, Any], int]:
    """`fleet ARGS --json` in a process of its own: exit code, JSON, peak RSS in kB."""
    argv = [sys.executable, "-c", PEAK_RSS, "--config", str(fleet.config), *args, "--json"]
    env, cwd = fleet.cli_env(), fleet.root
    proc = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    match = re.search(r"^peak-rss-kb: (\d+)$", proc.stderr, re.M)
    assert match, proc.stderr[-2000:]
    return proc.returncode, parse_json(proc), int(match[1])


def expected_output(command: str) -> bytes:
    return subprocess.run(["sh", "-c", command], capture_output=True, check=True).stdout


def test_50_mb_of_output_keeps_memory_bounded_and_the_log_whole(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(2)
    fleet.write_config(extra=user_ops(small="echo small", big=BIG_COMMAND))
    code, small, baseline = run_measured(fleet, "op", "small")
    assert code == 0, small
    code, data, peak = run_measured(fleet, "op", "big")  # 2 hosts: 100 MB through the controller

    assert code == 0, data
    assert_complete(data, fleet.names, 1)
    expected = expected_output(BIG_COMMAND)
    assert len(expected) == BIG
    digest = hashlib.sha256(expected).hexdigest()
    for name in fleet.names:
        log = Path(op(data, name, "big")["log"])
        assert log.stat().st_size == BIG  # the log file is whole, byte for byte
        assert hashlib.sha256(log.read_bytes()).hexdigest() == digest
    # the controller held a bounded part of it, never the whole output
    assert peak - baseline < 40 * 1024, (peak, baseline)
    with StateStore(fleet.state_dir) as store:
        for name in fleet.names:
            tail = next(o for o in store.get_run(data["run_id"]).hosts[name].ops).tail
            assert 0 < len(tail.encode()) <= TAIL_BYTES
            assert expected.decode().endswith(tail)
    assert recorded(fleet.state_dir, data["run_id"]) == data


def test_bytes_that_are_not_utf8_and_escapes_stay_readable(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(2)
    command = f"if [ {{name}} = host1 ]; then {GARBAGE}; exit 3; fi; echo fine"
    fleet.write_config(extra=user_ops(garbage=command))
    raw = expected_output(GARBAGE)
    assert b"\xff" in raw and b"\x1b" in raw

    # the terminal view (plain, with output): valid UTF-8, no escape or control character,
    # no line longer than a bounded piece, and the text around the garbage still there
    proc = fleet.run_cli(["-v", "op", "garbage"], env={"COLUMNS": "100"})
    assert proc.returncode == 3, proc.stderr
    out = proc.stdout.encode()
    out.decode("utf-8")  # strict
    assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", out), out[:2000]
    for needle in ("start", "bad bytes", "red", "overwritten", "nul", "end"):
        assert needle in proc.stdout, needle
    assert "no newline at the end" in proc.stdout
    assert max(len(line.encode()) for line in proc.stdout.splitlines()) < 8300
    assert "Traceback" not in proc.stderr

    # --json: valid JSON; the log holds the bytes exactly; the store a readable tail
    proc = fleet.run_cli(["op", "garbage", "--json"])
    data = parse_json(proc)
    assert proc.returncode == 3
    garbage = op(data, "host1", "garbage")
    assert garbage["status"] == "FAILED"
    assert garbage["exit_code"] == 3
    assert "\x1b" not in garbage["error"]
    assert Path(garbage["log"]).read_bytes() == raw
    assert statuses(data, "host2") == ["SUCCESS"]
    assert_complete(data, ["host2"], 1)
    with StateStore(fleet.state_dir) as store:
        tail = store.get_run(data["run_id"]).hosts["host1"].ops[0].tail
    assert tail.endswith("end \ufffd\ufffd no newline at the end")
    assert len(tail.encode()) <= TAIL_BYTES
    assert recorded(fleet.state_dir, data["run_id"]) == data
