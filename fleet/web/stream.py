"""The live stream: executor events and runs of other processes, as Server-Sent Events.

Every message is one JSON object whose `event` says what it is:

    hello          {server_time}: sent first on every connection; the page (re)loads its state
    run_started    {run}: a run of this service began (`run` is Run.to_json(), all PENDING)
    op_started     {run_id, host, op, attempt, started_at}   (host null: a controller op)
    op_finished    {run_id, host, result}                    (result: OpResult.to_json())
    op_slow        {run_id, host, op, elapsed}
    op_note        {run_id, host, op, message}
    host_finished  {run_id, host, result}                    (result: HostResult.to_json())
    run_finished   {run}: the finished run
    run_updated    {run}: a run of another fleet process changed (seen by polling the store)
    resync         this connection fell behind and lost messages: reload the state

The executor events' messages are `fleet.events.event_json(event, full=True)`. Op output is
not streamed; a page reads it from the logs endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fleet.errors import FleetError
from fleet.events import Event, event_json
from fleet.models import RunStatus, iso, utcnow
from fleet.state import StateStore

log = logging.getLogger("fleet.web")

QUEUE_SIZE = 4096  # messages a slow page may lag behind before it must resync
KEEPALIVE = 15.0  # seconds between comments on an idle stream (finds closed connections)
POLLED_RUNS = 8  # the newest runs the poller watches for changes by other processes
RECOVERY_INTERVAL = 2.0  # seconds between checks that other processes' runs still have one


def sse(message: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(message, separators=(",", ":")).encode() + b"\n\n"


class EventHub:
    """Fans messages out to every open stream; watches the store for other processes' runs."""

    def __init__(
        self,
        store: StateStore,
        *,
        is_local: Callable[[str], bool],
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.is_local = is_local
        self.poll_interval = poll_interval
        self._queues: set[asyncio.Queue[bytes | None]] = set()
        self._seen: dict[str, str] = {}  # run_id -> its last JSON, for runs of other processes
        self._closed = False
        self._last_recovery = -RECOVERY_INTERVAL

    # -- publishing ------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """An executor subscriber: never raises (it would stop the run)."""
        message = event_json(event, full=True)
        if message is not None:
            self.broadcast(message)

    def broadcast(self, message: dict[str, Any]) -> None:
        data = sse(message)
        for queue in list(self._queues):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:  # a stalled page: drop its backlog, tell it to reload
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(sse({"event": "resync"}))

    # -- streams ---------------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """GET /api/events: the stream, until the page goes or the service stops."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            await response.write(b"retry: 2000\n")
            await response.write(sse({"event": "hello", "server_time": iso(utcnow())}))
            while not self._closed:
                try:
                    data = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    data = b": keep-alive\n\n"
                if data is None:
                    break
                await response.write(data)
        except (ConnectionResetError, RuntimeError):  # the page went away
            pass
        finally:
            self._queues.discard(queue)
        return response

    def close(self) -> None:
        """End every stream (the service is stopping)."""
        self._closed = True
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    # -- runs of other processes -----------------------------------------------------------

    async def watch_store(self) -> None:
        """Poll the store for runs this service does not drive (the CLI, another controller)
        and broadcast each change as `run_updated`."""
        first = True
        while True:
            try:
                self.poll_once(announce=not first)
                first = False
            except FleetError as exc:
                log.warning("cannot read the state store: %s", exc)
            await asyncio.sleep(self.poll_interval)

    def poll_once(self, *, announce: bool = True) -> None:
        runs = [r for r in self.store.list_runs(POLLED_RUNS) if not self.is_local(r.run_id)]
        if any(r.status is RunStatus.RUNNING for r in runs) and self._recovered_aborted():
            runs = [r for r in self.store.list_runs(POLLED_RUNS) if not self.is_local(r.run_id)]
        for run in runs:
            snapshot = run.to_json()
            key = json.dumps(snapshot, sort_keys=True)
            if self._seen.get(run.run_id) == key:
                continue
            self._seen[run.run_id] = key
            if announce:
                self.broadcast({"event": "run_updated", "run": snapshot})
        if len(self._seen) > 4 * POLLED_RUNS:
            keep = {r.run_id for r in runs}
            self._seen = {k: v for k, v in self._seen.items() if k in keep}

    def _recovered_aborted(self) -> bool:
        """While another process runs, check now and then (a write) that it is still there:
        when it died, its run becomes ABORTED and the page shows that."""
        now = time.monotonic()
        if now - self._last_recovery < RECOVERY_INTERVAL:
            return False
        self._last_recovery = now
        return bool(self.store.recover_aborted())
