"""The runs the dashboard starts: each a background task of `Fleet.execute`, cancellable here.

The service shares fleet's state store with the CLI, so the store's host locks keep a host in
at most one run across both. fleet.toml is read again whenever it changes, so a run always
uses the inventory on disk. A run started by another process (the CLI) is shown but cannot be
cancelled from here: `cancel` says where to cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.api import Fleet, PlannedRun
from fleet.config import Inventory, load_inventory
from fleet.errors import FleetError
from fleet.events import Event, RunFinished, RunStarted, Subscriber
from fleet.executor import PipelineExecutor, RunOptions
from fleet.models import Run, RunStatus
from fleet.state import StateStore
from fleet.transport.base import SessionFactory

log = logging.getLogger("fleet.web")

SHUTDOWN_GRACE = 20.0  # seconds running runs get to record CANCELLED when the service stops


class Conflict(FleetError):
    """The request cannot be done in the run's or the hosts' present state (HTTP 409)."""


@dataclass
class _LiveRun:
    executor: PipelineExecutor
    task: asyncio.Task[Run] | None = None
    finished: bool = False  # recorded as finished; the task may still be closing connections


class ConfigSource:
    """fleet.toml, loaded again when the file changes (size, mtime or inode)."""

    def __init__(self, path: Path, loader: Callable[[Path], Inventory] = load_inventory) -> None:
        self.path = path
        self._loader = loader
        self._stamp: tuple[int, int, int] | None = None
        self._inventory: Inventory | None = None

    def inventory(self) -> Inventory:
        st = os.stat(self.path) if self.path.exists() else None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino) if st else None
        if self._inventory is None or stamp != self._stamp:
            self._inventory = self._loader(self.path)  # a ConfigError leaves the old stamp
            self._stamp = stamp
        return self._inventory


class RunManager:
    """Starts runs in the background and keeps run_id -> executor for those still going."""

    def __init__(
        self,
        config: ConfigSource,
        store: StateStore,
        *,
        subscribers: Sequence[Subscriber] = (),
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.subscribers = list(subscribers)
        self.session_factory = session_factory
        self._live: dict[str, _LiveRun] = {}
        self._local: set[str] = set()  # every run this service started

    def fleet(self) -> Fleet:
        return Fleet(self.config.inventory(), self.store, session_factory=self.session_factory)

    def is_local(self, run_id: str) -> bool:
        return run_id in self._local

    def cancellable(self, run_id: str, status: RunStatus | None = None) -> bool:
        """A run of this service, or of a fleet process on this machine that we may signal."""
        live = self._live.get(run_id)
        if live is not None:
            return not live.finished
        if status is not RunStatus.RUNNING:
            return False
        controller = self.store.run_controller(run_id)
        return controller is not None and controller.can_signal(socket.gethostname())

    async def start(self, pipeline: str, options: RunOptions) -> str:
        """Plan and start a run; returns its id once it is recorded (RunStarted)."""
        fleet = self.fleet()
        plan = fleet.plan(pipeline, options)
        self._check_hosts_free(plan)
        started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        live: _LiveRun | None = None

        def on_event(event: Event) -> None:
            if isinstance(event, RunStarted) and live is not None:
                run_id = event.run.run_id
                self._local.add(run_id)
                self._live[run_id] = live
                if not started.done():
                    started.set_result(run_id)
            elif isinstance(event, RunFinished) and live is not None:
                live.finished = True

        executor = fleet.prepare([on_event, *self.subscribers])
        live = _LiveRun(executor)
        task = asyncio.create_task(fleet.execute(plan, executor))
        live.task = task
        first: list[asyncio.Future[Any]] = [started, task]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            task.result()  # raises what stopped the run before it began
            raise FleetError("the run ended before it started")  # pragma: no cover
        run_id = started.result()
        task.add_done_callback(lambda t: self._finished(run_id, t))
        hosts = ", ".join(h.name for h in plan.hosts)
        log.info("run %s started: %s on %s", run_id, plan.pipeline.id, hosts)
        return run_id

    def _check_hosts_free(self, plan: PlannedRun) -> None:
        """Refuse at once (rather than fail hosts) when a chosen host is in a running run."""
        locks = self.store.locked_hosts()
        wanted = {h.name for h in plan.hosts} & set(locks)
        if not wanted:
            return
        self.store.recover_aborted()  # frees the locks of runs whose process is gone
        locks = self.store.locked_hosts()
        busy: dict[str, str] = {}
        for name in sorted(wanted & set(locks)):
            holder = locks[name]
            with contextlib.suppress(FleetError):
                if self.store.get_run(holder).status is RunStatus.RUNNING:
                    busy[name] = holder
        if busy:
            which = ", ".join(f"{h} (run {r})" for h, r in busy.items())
            raise Conflict(f"hosts already in a running run: {which}")

    def _finished(self, run_id: str, task: asyncio.Task[Run]) -> None:
        self._live.pop(run_id, None)
        if task.cancelled():
            log.warning("run %s: its task was cancelled", run_id)
        elif (exc := task.exception()) is not None:
            log.error("run %s stopped: %s", run_id, exc, exc_info=exc)
        else:
            log.info("run %s finished: %s", run_id, task.result().status.value)

    def cancel(self, run_id: str) -> None:
        """Ask a run of this service to stop; Conflict when it is not one that runs here."""
        live = self._live.get(run_id)
        if live is not None and not live.finished:
            live.executor.cancel()
            return
        run = self.store.get_run(run_id)  # StateError: unknown run
        if run.status is not RunStatus.RUNNING:
            raise Conflict(f"run {run_id} is {run.status.value}, not running")
        controller = self.store.run_controller(run_id)
        if controller is not None and controller.cancel_run(socket.gethostname()):
            return  # that process cancels the run as on Ctrl-C, and records it
        raise Conflict(
            f"run {run_id} is driven by another fleet process that this service cannot "
            "signal; cancel it there (Ctrl-C, or SIGTERM to that process)"
        )

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Cancel every run still going and wait (up to `grace` s) until each is recorded."""
        tasks = [live.task for live in self._live.values() if live.task is not None]
        for live in list(self._live.values()):
            live.executor.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
