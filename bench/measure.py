"""Run a controller as a child process and measure it: wall time, CPU, memory.

* wall: from just before the fork to the moment `wait4` returns.
* cpu: user + system seconds from `wait4`'s rusage: the child and every descendant it
  waited for (Ansible's forks and their ssh clients). Processes that outlive their parent
  (Ansible's ControlPersist masters) are read from /proc by the caller before they exit.
* rss: `ru_maxrss` from the same rusage: the peak resident set of the largest single process.
* machine: the CPU seconds the whole machine spent (every core, every process: controller and
  hosts) while it ran, from /proc/stat; against 2 x wall it shows how busy the machine was.
* tree: the peak of the summed PSS (proportional set size, so that pages forked children share
  are counted once) of the child's whole process tree, sampled every `interval` seconds from
  /proc/PID/smaps_rollup. For a single-process controller it is about its RSS; for a forking
  one (Ansible) it is what the controller's processes hold together.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.integration.harness import descendants

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Measurement:
    wall: float
    cpu: float
    rss_mb: float
    tree_mb: float
    returncode: int
    machine: float = 0.0


def machine_busy() -> float:
    """CPU seconds the machine has spent busy (all cores) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS  # less idle and iowait


def tree_pids(root: int) -> list[int]:
    """`root` and every process below it."""
    return [root, *descendants(root)]


def pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (for processes no one waits for)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class _TreeSampler(threading.Thread):
    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            total = sum(pss_kb(p) for p in tree_pids(self.pid))
            self.peak_kb = max(self.peak_kb, total)


def measure(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdout: Path,
    stderr: Path,
    interval: float = 0.5,
    timeout: float = 1800,
) -> Measurement:
    """Run `argv` to completion and measure it (see the module docstring)."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        busy = machine_busy()
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        sampler = _TreeSampler(proc.pid, interval)
        sampler.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            sampler.stopped.set()
        wall = time.perf_counter() - start
        machine = machine_busy() - busy
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    cpu = usage.ru_utime + usage.ru_stime
    rss_mb = usage.ru_maxrss / 1024
    tree_mb = max(sampler.peak_kb / 1024, 0.0)
    return Measurement(wall, cpu, rss_mb, tree_mb, proc.returncode, machine)
