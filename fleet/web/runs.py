"""The runs the dashboard starts: each a background task of `Fleet.execute`, cancellable here.

The service shares fleet's state store with the CLI, so the store's host locks keep a host in
at most one run across both. fleet.toml is read again whenever it changes, so a run always
uses the inventory on disk. A run started by another process (the CLI) is shown but cannot be
cancelled from here: `cancel` says where to cancel it.

A run whose task ends without recording its end (the store failed under it: the disk is full
or read-only) would stay RUNNING, holding its hosts, for as long as this process lives: the
recovery of the next start only aborts runs of dead processes. So the service records such a
run ABORTED itself (`StateStore.abort_run`): at once, and while the store still cannot be
written, again before each new run and every RECORD_RETRY seconds; the page gets its
`run_finished`.
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
from fleet.config.inventory import Inventory, load_inventory
from fleet.errors import Conflict, FleetError, StateError
from fleet.events import Event, RunFinished, RunStarted, Subscriber
from fleet.models import Run, RunOptions, RunStatus
from fleet.run.executor import PipelineExecutor
from fleet.state import StateStore
from fleet.transport.base import SessionFactory

log = logging.getLogger("fleet.web")

SHUTDOWN_GRACE = 20.0  # seconds running runs get to record CANCELLED when the service stops
RECORD_RETRY = 2.0  # seconds between tries to record ABORTED a run that could not record its end


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
        self._unrecorded: dict[str, str] = {}  # run_id -> why it stopped, its end not recorded
        self._retrying: asyncio.Task[None] | None = None
        self._closing = False

    def fleet(self) -> Fleet:
        return Fleet(self.config.inventory(), self.store, session_factory=self.session_factory)

    def is_local(self, run_id: str) -> bool:
        return run_id in self._local

    def cancellable(self, run_id: str, status: RunStatus | None = None) -> bool:
        """A run of this service, or of a fleet process on this machine that we may signal."""
        live = self._live.get(run_id)
        if live is not None:
            return not live.finished
        if status is not RunStatus.RUNNING or run_id in self._local:
            return False  # ours and no longer live: it has stopped (never signal ourselves)
        controller = self.store.run_controller(run_id)
        return controller is not None and controller.can_signal(socket.gethostname())

    async def start(self, pipeline: str, options: RunOptions) -> str:
        """Plan and start a run; returns its id once it is recorded (RunStarted)."""
        self.record_stopped_runs()  # so that their hosts are free, if the store can be written
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
        live = self._live.pop(run_id, None)
        if task.cancelled():
            why = "its task was cancelled"
            log.warning("run %s: %s", run_id, why)
        elif (exc := task.exception()) is not None:
            why = str(exc) if isinstance(exc, StateError) else f"{type(exc).__name__}: {exc}"
            log.error("run %s stopped: %s", run_id, exc, exc_info=exc)
        else:
            log.info("run %s finished: %s", run_id, task.result().status.value)
            return
        if live is None or live.finished:
            return  # its end is recorded (it failed after that)
        self._unrecorded[run_id] = why
        self.record_stopped_runs()
        if run_id in self._unrecorded:
            log.warning("run %s: recorded as ABORTED as soon as the store can be written", run_id)
        if self._unrecorded and not self._closing and self._retrying is None:
            self._retrying = asyncio.create_task(self._retry_recording())

    def record_stopped_runs(self) -> None:
        """Record ABORTED (and announce) each run of ours that stopped without recording its
        end, freeing its hosts; while the store still cannot be written, leave them for the
        next try."""
        for run_id, why in list(self._unrecorded.items()):
            try:
                self.store.abort_run(run_id, why)
                run = self.store.get_run(run_id)
            except StateError as exc:
                log.debug("run %s: its end cannot be recorded yet: %s", run_id, exc)
                return
            del self._unrecorded[run_id]
            log.warning("run %s recorded as %s (it had stopped: %s)", run_id, run.status.value, why)
            for subscriber in self.subscribers:
                subscriber(RunFinished(run))

    async def _retry_recording(self) -> None:
        try:
            while self._unrecorded:
                await asyncio.sleep(RECORD_RETRY)
                self.record_stopped_runs()
        finally:
            self._retrying = None

    def cancel(self, run_id: str) -> None:
        """Ask a run of this service to stop; Conflict when it is not one that runs here."""
        live = self._live.get(run_id)
        if live is not None and not live.finished:
            live.executor.cancel()
            return
        run = self.store.get_run(run_id)  # StateError: unknown run
        if run.status is not RunStatus.RUNNING:
            raise Conflict(f"run {run_id} is {run.status.value}, not running")
        if run_id in self._local:  # ours, stopped: its record says RUNNING until it is fixed
            why = self._unrecorded.get(run_id, "its end is not recorded")
            raise Conflict(
                f"run {run_id} has stopped ({why}); it is recorded as ABORTED as soon as the "
                "state store can be written"
            )
        controller = self.store.run_controller(run_id)
        if controller is not None and controller.cancel_run(socket.gethostname()):
            return  # that process cancels the run as on Ctrl-C, and records it
        raise Conflict(
            f"run {run_id} is driven by another fleet process that this service cannot "
            "signal; cancel it there (Ctrl-C, or SIGTERM to that process)"
        )

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Cancel every run still going and wait (up to `grace` s) until each is recorded.

        A run that stopped unrecorded gets a last try; if the store still cannot be written,
        the next fleet process to open it marks the run ABORTED (its process is gone)."""
        tasks = [live.task for live in self._live.values() if live.task is not None]
        for live in list(self._live.values()):
            live.executor.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        self._closing = True
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
        self.record_stopped_runs()
