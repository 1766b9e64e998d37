"""200 simulated hosts, 10 runs in a row in one controller process (the dashboard's case).

The simulated fleet (fleet.demo.simulation: an asyncssh server in its own process, one listener
per host) stands in for 200 machines. After every run the controller holds no SSH connection,
no extra file descriptor, task, thread or child process, and the hosts run nothing of fleet's
any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.api import Fleet
from fleet.config.inventory import load_inventory
from fleet.demo.simulation import start_demo
from fleet.models import RunOptions, RunStatus
from fleet.state import StateStore
from tests.integration.harness import descendants, parents

HOSTS = 200
RUNS = 10


@dataclass(frozen=True)
class Usage:
    fds: int
    sockets: int
    tasks: int
    threads: int
    children: int  # processes whose parent is this one
    host_processes: int  # processes the simulated hosts run for their sessions
    rss_kb: int


def usage(server_pid: int) -> Usage:
    fds = os.listdir("/proc/self/fd")
    sockets = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    rss = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return Usage(
        fds=len(fds),
        sockets=sockets,
        tasks=len(asyncio.all_tasks()),
        threads=threading.active_count(),
        children=sum(parent == os.getpid() for parent in parents().values()),
        host_processes=len(descendants(server_pid)),
        rss_kb=rss,
    )


async def settled(server_pid: int, timeout: float = 10) -> Usage:
    """Usage once the simulated hosts have reaped the sessions of the run (they end at once,
    but the server notices asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        now = usage(server_pid)
        if now.host_processes == 0 or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.05)


@pytest.mark.many_processes
def test_200_hosts_10_runs_in_one_process_leak_nothing(tmp_path: Path) -> None:
    with start_demo(tmp_path / "demo", HOSTS, break_host=None) as demo:
        with demo.config_path.open("a") as config:
            config.write('\n[ops.hello]\ncommand = "echo hello from {name}"\n')
        inventory = load_inventory(demo.config_path, ssh_config=None)
        with StateStore(tmp_path / "state") as store:
            fleet = Fleet(inventory, store)

            async def runs() -> tuple[Usage, list[Usage]]:
                before = await settled(demo.server_pid)
                after = []
                for _ in range(RUNS):
                    run = await fleet.execute(fleet.plan("op:hello", RunOptions()), fleet.prepare())
                    assert run.status is RunStatus.COMPLETE, [
                        (n, h.ops[0].error) for n, h in run.hosts.items() if h.ops[0].error
                    ]
                    assert len(run.hosts) == HOSTS
                    assert store.get_run(run.run_id).to_json() == run.to_json()
                    after.append(await settled(demo.server_pid))
                return before, after

            before, after = asyncio.run(runs())

    assert before.children == 1 and before.host_processes == 0  # (the simulated fleet)
    for i, now in enumerate(after, 1):
        assert now.sockets == before.sockets, (i, before, now)  # no SSH connection left open
        assert now.fds == before.fds, (i, before, now)
        assert now.tasks == before.tasks == 1, (i, now)  # only the test's own task
        assert now.children == before.children, (i, now)
        assert now.host_processes == 0, (i, now)  # no session, shell or lock holder left
        assert now.threads == after[0].threads, (i, after[0], now)  # the resolver's pool only
    growth = after[-1].rss_kb - after[0].rss_kb
    assert growth < 32 * 1024, [u.rss_kb for u in after]
