"""Faults of the views: a stdout or stderr that cannot be written, and one nobody reads.

A view that cannot write stops the view, never the run: `| head -1`, `>&-`, `2>&-` and
`> /dev/full` leave the run to go on, be recorded and exit as usual, without a traceback. A
reader that does not read (an unscrolled `less`, Ctrl-S) costs lines, counted in a note at the
end, never time: ops time out on time and Ctrl-C cancels while the pipe is full.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.conftest import pipeline, recorded, statuses, user_ops, wait_log
from tests.integration.harness import FleetFactory, TestFleet, wait_until

TALK = user_ops(
    talk="for i in $(seq 1 40); do echo line $i; sleep 0.05; done", after="echo after"
) + pipeline("p", "talk", "after")

FLOOD_LINE = "flood " + "x" * 60


def runs(state_dir: Path) -> list[tuple[str, str]]:
    """(run_id, status) of every run, read with plain sqlite3 (while fleet still runs)."""
    if not (state_dir / "fleet.db").exists():
        return []
    with contextlib.closing(sqlite3.connect(state_dir / "fleet.db", timeout=10)) as db:
        try:
            return list(db.execute("SELECT run_id, status FROM runs ORDER BY started_at"))
        except sqlite3.OperationalError:  # the store is being created
            return []


def the_run_ended(fleet: TestFleet) -> bool:
    return any(status != "RUNNING" for _, status in runs(fleet.state_dir))


def assert_recorded_complete(fleet: TestFleet) -> None:
    [(run_id, status)] = runs(fleet.state_dir)
    assert status == "COMPLETE"
    data = recorded(fleet.state_dir, run_id)
    for name in fleet.names:
        assert statuses(data, name) == ["SUCCESS", "SUCCESS"], data["hosts"][name]


@pytest.mark.parametrize(
    ("args", "redirect"),
    [
        (["-v", "run", "p"], ">&-"),
        (["-v", "run", "p"], ">/dev/full"),
        (["run", "p", "--json"], "2>&-"),
        (["run", "p", "--json"], "2>/dev/full"),
        (["run", "p", "--json"], ">/dev/full"),
        (["run", "p", "--json"], ">&-"),
    ],
)
def test_a_stream_that_cannot_be_written_stops_the_view_not_the_run(
    fleet_factory: FleetFactory, args: list[str], redirect: str
) -> None:
    fleet = fleet_factory(2)
    fleet.write_config(extra=TALK)
    argv = fleet.cli_argv(args)
    proc = subprocess.run(
        ["sh", "-c", f'exec "$@" {redirect}', "sh", *argv], env=fleet.cli_env(), cwd=fleet.root,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr
    assert_recorded_complete(fleet)


@pytest.mark.parametrize("closed", ["stdout", "stderr"])
def test_a_reader_that_goes_away_stops_the_view_not_the_run(
    fleet_factory: FleetFactory, closed: str
) -> None:
    """`fleet -v run p | head -1`, and `fleet run p --json 2>&1 >out | head -1`."""
    fleet = fleet_factory(2)
    fleet.write_config(extra=TALK)
    args = ["-v", "run", "p"] if closed == "stdout" else ["run", "p", "--json"]
    proc = subprocess.Popen(
        fleet.cli_argv(args), env=fleet.cli_env(), cwd=fleet.root, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    read, other = (proc.stdout, proc.stderr) if closed == "stdout" else (proc.stderr, proc.stdout)
    assert read is not None and other is not None
    assert read.readline()  # the first line, as `head -1` reads it, then the reader is gone
    read.close()
    rest = other.read()
    other.close()
    code = proc.wait(timeout=120)

    assert code == 0, rest[-4000:]
    assert "Traceback" not in rest and "Exception" not in rest, rest
    assert_recorded_complete(fleet)


def flood_and(op: str, timeout: float) -> str:
    """An op printing ~2.7 MB in 40 000 lines (far more than a pipe holds), then `op`."""
    ops = user_ops(flood=f"yes {FLOOD_LINE} | head -n 40000", then=(op, timeout))
    return ops + pipeline("p", "flood", "then")


def spawn_unread(fleet: TestFleet) -> subprocess.Popen[bytes]:
    """`fleet -v run p` into a pipe that nobody reads (until `communicate`)."""
    return subprocess.Popen(
        fleet.cli_argv(["-v", "run", "p"]), env=fleet.cli_env(), cwd=fleet.root,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_an_unread_pipe_costs_lines_not_time(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(2)
    fleet.write_config(extra=flood_and("echo started; sleep 60", 3))
    started = time.monotonic()
    proc = spawn_unread(fleet)
    # the op times out after its 3 s although nobody reads fleet's output (generous bound)
    wait_until(lambda: the_run_ended(fleet), 60, "the run to end with its stdout unread")
    took = time.monotonic() - started
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err[-4000:]
    [(run_id, status)] = runs(fleet.state_dir)
    assert status == "FAILED"
    data = recorded(fleet.state_dir, run_id)
    for name in fleet.names:
        assert statuses(data, name) == ["SUCCESS", "TIMEOUT"], data["hosts"][name]
        log = next(fleet.state_dir.glob(f"logs/{run_id}/{name}/flood.log")).read_bytes()
        assert log.count(FLOOD_LINE.encode()) == 40000  # the log is whole
    shown = out.count(FLOOD_LINE.encode())
    assert shown < 2 * 40000, "some lines were dropped for the slow reader"
    assert b"line(s) of progress were not shown: the reader was too slow" in err, err
    assert b"Traceback" not in err
    assert took < 45, took


def test_ctrl_c_works_with_an_unread_pipe(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(2)
    fleet.write_config(extra=flood_and("echo started; sleep 60", 120))
    proc = spawn_unread(fleet)
    for name in fleet.names:
        wait_log(fleet, name, "then", b"started", timeout=60)
    proc.send_signal(signal.SIGINT)
    wait_until(lambda: the_run_ended(fleet), 20, "Ctrl-C to cancel the run, its stdout unread")
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err[-4000:]
    [(run_id, status)] = runs(fleet.state_dir)
    assert status == "CANCELLED"
    data = recorded(fleet.state_dir, run_id)
    for name in fleet.names:
        assert statuses(data, name) == ["SUCCESS", "CANCELLED"], data["hosts"][name]
