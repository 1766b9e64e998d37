"""Where fleet's controller spends its time: one do-all under pyinstrument, summed by part.

    bench/.venv/bin/pip install -r bench/requirements.txt     # (pyinstrument is in there)
    .venv/bin/python bench/profile.py --hosts 200              # simulated hosts above 100
    .venv/bin/python bench/profile.py --hosts 50 --mode streaming --save /tmp/fleet.pyisession

It starts the hosts as bench/run.py does, runs do-all once to warm them, then once more with
fleet (on fleet's own interpreter) under pyinstrument's sampling profiler, and prints the
CPU time spent in each part of the controller: start-up (imports), the SSH protocol
(asyncssh and the ciphers), the state store, the rest of fleet, the sockets, the event loop.
pyinstrument samples CPU time here (its sampler's `timer_func` set to `time.process_time`):
on a saturated machine wall-time samples land wherever the process happened to be
descheduled. pyinstrument comes from bench/.venv (never fleet's dependencies): its
site-packages directory is put on the profiled run's PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.hosts import HostSet, demo_hosts, sshd_hosts
from bench.tools import PEER_BIN, REPO_ROOT

# The profiled process: fleet's own __main__ under pyinstrument; the session is saved to argv[1].
WRAPPER = """\
import runpy, sys, time
from pyinstrument import Profiler
from pyinstrument.stack_sampler import get_stack_sampler
out = sys.argv.pop(1)
sys.argv[0] = "fleet"
get_stack_sampler().timer_func = time.process_time  # sample CPU time, not wall time
profiler = Profiler(interval=0.0005, async_mode="disabled")
profiler.start()
try:
    runpy.run_module("fleet", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    profiler.stop()
    profiler.last_session.save(out)
"""

PARTS = (
    "start-up: imports",
    "SSH protocol: asyncssh",
    "SSH ciphers: cryptography",
    "state store: fleet.state, sqlite3, log files",
    "fleet: executor, runners, transport, CLI, JSON",
    "socket send/recv (the kernel's loopback work)",
    "event loop (asyncio) and the rest",
    "waiting: epoll, nothing to do",
)
WAITING = PARTS[-1]


def part_of(stack: Sequence[str]) -> str:
    """The part a sample belongs to, from its stack (outermost first, `function\0file\0line`;
    a C function's file is `<built-in>`, and it counts for the Python code that called it)."""
    frames = [[*frame.split("\x00"), "", ""] for frame in stack]
    if any("importlib._bootstrap" in file for _, file, *_ in frames):
        return PARTS[0]
    innermost = frames[-1][0] if frames else ""
    if innermost == "epoll.poll":
        return WAITING
    if innermost.startswith("socket."):
        return PARTS[5]
    python = [file for _, file, *_ in reversed(frames) if file and file != "<built-in>"]
    if not python or "/asyncio/" in python[0] or python[0].endswith("/selectors.py"):
        return PARTS[6]  # the loop's own work
    for file in python:  # stdlib code (pathlib, shlex, ...) counts for whoever called it
        if "/asyncssh/" in file:
            return PARTS[1]
        if "/cryptography/" in file:
            return PARTS[2]
        if "/fleet/state/" in file:
            return PARTS[3]
        if "/fleet/" in file or "/click/" in file:
            return PARTS[4]
        if "/asyncio/" in file:
            break
    return PARTS[6]


def summarize(session_path: Path) -> tuple[dict[str, float], float]:
    """Seconds per part, and the process CPU time the session saw."""
    from pyinstrument.session import Session

    session = Session.load(session_path)
    totals: dict[str, float] = defaultdict(float)
    for stack, seconds in session.frame_records:
        totals[part_of([frame.split("\x01")[0] for frame in stack])] += seconds
    return dict(totals), session.cpu_time


def profile_once(hosts: HostSet, mode: str, out: Path) -> int:
    pyinstrument_path = next((PEER_BIN.parent / "lib").glob("python3*/site-packages"))
    env = dict(os.environ, HOME=str(hosts.workdir / "fleet-home"), NO_COLOR="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(pyinstrument_path)])
    fleet = [
        "--config", str(hosts.fleet_config), "--state-dir", str(hosts.workdir / "fleet-state"),
        "do-all", "--json", "--mode", mode,
    ]  # fmt: skip
    warm = [sys.executable, "-m", "fleet", *fleet]
    for argv in (warm, [sys.executable, "-c", WRAPPER, str(out), *fleet]):
        hosts.new_commit()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/profile.py", description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=200)
    p.add_argument("--sshd-max", type=int, default=100, help="real sshd hosts up to this many")
    p.add_argument("--mode", choices=("lockstep", "streaming"), default="lockstep")
    p.add_argument("--save", type=Path, help="keep the pyinstrument session here")
    args = p.parse_args(argv)
    try:
        import pyinstrument  # noqa: F401  (in bench/.venv: checked before any host starts)
    except ImportError:
        sys.path.append(str(next((PEER_BIN.parent / "lib").glob("python3*/site-packages"))))
    with tempfile.TemporaryDirectory(prefix="fleet-profile-") as tmp:
        workdir = Path(tmp) / "hosts"
        workdir.mkdir()
        starter = sshd_hosts if args.hosts <= args.sshd_max else demo_hosts
        with starter(workdir, args.hosts) as hosts:
            out = args.save or Path(tmp) / "fleet.pyisession"
            code = profile_once(hosts, args.mode, out)
            if code != 0:
                return code
            totals, cpu = summarize(out)
    busy = sum(v for k, v in totals.items() if k != WAITING)
    print(f"fleet do-all --mode {args.mode}, {args.hosts} {hosts.kind} hosts (pyinstrument)")
    print(f"{'part':48} {'s':>7} {'of busy':>8}")
    for part in PARTS:
        seconds = totals.get(part, 0.0)
        share = "" if part == WAITING else f"{100 * seconds / busy:7.0f}%"
        print(f"{part:48} {seconds:7.2f} {share:>8}")
    print(f"{'busy (all but waiting)':48} {busy:7.2f}")
    print(f"{'the process CPU time meanwhile':48} {cpu:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
