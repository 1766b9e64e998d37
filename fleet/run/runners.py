"""How each host op runs over a `Session`: the bridge between ops' builders and the transport.

A runner returns an `OpOutcome`; it raises only for cancellation (which the executor turns into
CANCELLED or TIMEOUT) and for transport errors (`HostError`), which fail the op with their
message. The executor applies timeouts and retries around it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import ConnectionLost
from fleet.models import Host, Op, Privilege
from fleet.ops import builtin as ops
from fleet.ops import detach
from fleet.transport.base import Session

RECONNECT_DELAYS = (0.5, 1.0, 2.0, 3.0, 5.0)


@dataclass(frozen=True)
class OpContext:
    run_id: str
    op: Op
    attempt: int
    output: Callable[[bytes], None]  # also feeds `tail`
    note: Callable[[str], None]
    deadline: float  # time.monotonic() by which the op must end
    tail: TailBuffer  # the end of this attempt's output, for errors and the record


@dataclass(frozen=True)
class OpOutcome:
    exit_code: int | None
    system_before: str | None = None
    system_after: str | None = None
    error: str | None = None
    deferred_units: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None


def error_from_output(tail: bytes, exit_code: int | None) -> str:
    """The op's own last `fleet: ...` line, else its last output line, with the exit status."""
    lines = [ln.strip() for ln in tail.decode("utf-8", "replace").splitlines() if ln.strip()]
    ours = [ln[len("fleet: ") :] for ln in lines if ln.startswith("fleet: ")]
    status = f"exit status {exit_code}" if exit_code is not None else "killed"
    if ours:
        return f"{ours[-1]} ({status})"
    if lines:
        return f"{status}: {lines[-1][:200]}"
    return status


def controller_unit() -> str | None:
    """The systemd unit this process runs in, if any (from /proc/self/cgroup)."""
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        last = line.rsplit("/", 1)[-1]
        if last.endswith(".service"):
            return last
    return None


def local_machine_id() -> str | None:
    try:
        return Path("/etc/machine-id").read_text().strip() or None
    except OSError:
        return None


class HostOpRunner:
    """Runs the ops of one host over its session."""

    def __init__(self, session: Session, host: Host, *, self_unit: str | None = None) -> None:
        self.session = session
        self.host = host
        self.self_unit = self_unit
        self.privilege = Privilege.of(host)

    async def run(self, ctx: OpContext) -> OpOutcome:
        op = ctx.op
        if op.builtin and op.id in ops.DETACHED_OPS:
            return await self._detached(ctx, ops.rebuild_argv(self.host, op.id))
        if op.builtin and op.id == "restart":
            return await self._restart(ctx)
        return await self._script(ctx, ops.host_script(op, self.host))

    async def _script(self, ctx: OpContext, script: str) -> OpOutcome:
        result = await self.session.run(script, output=ctx.output, privileged=self.privilege.sudo)
        code = result.exit_code
        error = None if code == 0 else error_from_output(ctx.tail.data, code)
        return OpOutcome(exit_code=result.exit_code, error=error)

    async def _restart(self, ctx: OpContext) -> OpOutcome:
        deferred: tuple[str, ...] = ()
        if self.self_unit and self.self_unit in self.host.restart_units:
            _, out = await self.session.capture("cat /etc/machine-id 2>/dev/null")
            if out.decode(errors="replace").strip() == local_machine_id():
                deferred = (self.self_unit,)
        outcome = await self._script(ctx, ops.restart_script(self.host, deferred_units=deferred))
        return OpOutcome(outcome.exit_code, error=outcome.error, deferred_units=deferred)

    async def _detached(self, ctx: OpContext, argv: list[str]) -> OpOutcome:
        """Launch, follow and finish in one command (`detach.run_script`); after a dropped
        connection, reconnect and go on with the separate steps from where it stopped."""
        directory = detach.run_directory(self.host, ctx.run_id, ctx.op.id, ctx.attempt)
        unit = detach.unit_name(ctx.run_id, ctx.op.id, ctx.attempt)
        stream = detach.DetachedStream(detach.new_delimiter())
        wait = int(max(0.0, ctx.deadline - time.monotonic()) * 3 / 4)
        holder = f"run {ctx.run_id}, {ctx.op.id} attempt {ctx.attempt}"
        script = detach.run_script(
            self.host, directory, argv, unit=unit, delimiter=stream.delimiter,
            holder=holder, wait=wait,
        )  # fmt: skip
        waited: list[str] = []

        def sink(data: bytes) -> None:
            before = stream.launched
            out = stream.feed(data)
            if before is None and not waited and (earlier := detach.waiting_for(stream.head)):
                waited.append(earlier)
                ctx.note(f"an earlier switch ({earlier}) is still running; waiting up to {wait}s")
            if before is None and stream.launched is not None:
                info = stream.launched
                ctx.note(f"{argv[0]} started detached ({info.method}, pid {info.pid})")
            if out:
                ctx.output(out)

        code: int | None = None
        try:
            result = await self.session.run(
                self.privilege.script(script), output=sink, privileged=self.privilege.sudo
            )
            code = result.exit_code
        except ConnectionLost as exc:
            if stream.launched is None:  # the launch goes on without us: see what it left
                ctx.note(f"connection lost while starting ({exc.reason}); reconnecting")
                recover = self.privilege.script(detach.recover_script(directory))
                code, out = await self._capture_again(ctx, recover)
                stream.launched = detach.parse_launch(out)
                stream.head = out
                if stream.launched.pid is not None:
                    ctx.note(f"{argv[0]} started detached (pid {stream.launched.pid})")
            # else the follow below notes the loss, reconnects and goes on from where it was
        except asyncio.CancelledError:
            if stream.launched is not None and stream.launched.pid is not None:
                await self._stop_detached(ctx, directory, stream.launched.pid)
            raise
        launched = stream.launched or detach.parse_launch(stream.head)
        if launched.busy is not None:
            return OpOutcome(
                exit_code=code or None,
                system_before=launched.system_before,
                error=f"an earlier switch ({launched.busy}) is still running after {wait}s:"
                f" started no other {argv[0]} on this host",
            )
        if stream.launched is None or launched.pid is None:
            return OpOutcome(
                exit_code=code or None,
                system_before=launched.system_before,
                error=f"could not start {argv[0]} detached ({launched.method}): "
                + error_from_output(stream.head, code),
            )
        rc, after = detach.parse_finish(stream.finish)
        if not stream.finished or (rc is None and b"rc=" not in stream.finish):
            try:  # the follow or the finish did not come to an end: do them separately
                await self._follow(ctx, directory, launched.pid, stream.output_bytes)
            except asyncio.CancelledError:
                await self._stop_detached(ctx, directory, launched.pid)
                raise
            rc, after = await self._finish(ctx, directory)
        error = None if rc == 0 else error_from_output(ctx.tail.data, rc)
        return OpOutcome(rc, launched.system_before, after, error)

    async def _finish(self, ctx: OpContext, directory: str) -> tuple[int | None, str | None]:
        try:
            _, out = await self.session.capture(detach.finish_script(self.host, directory))
        except ConnectionLost as exc:
            ctx.note(f"connection lost while finishing ({exc.reason}); reconnecting")
            _, out = await self._capture_again(ctx, detach.finish_script(self.host, directory))
        return detach.parse_finish(out)

    async def _follow(self, ctx: OpContext, directory: str, pid: int, offset: int = 0) -> None:
        received = offset

        def sink(data: bytes) -> None:
            nonlocal received
            received += len(data)
            ctx.output(data)

        attempt = 0
        while True:
            try:
                await self.session.run(detach.follow_script(directory, pid, received), output=sink)
                return
            except ConnectionLost as exc:
                ctx.note(f"connection lost while following ({exc.reason}); reconnecting")
                await self._reconnect(ctx, attempt)
                attempt += 1

    async def _capture_again(self, ctx: OpContext, script: str) -> tuple[int, bytes]:
        """Reconnect, then run an idempotent script, as often as the deadline allows."""
        attempt = 0
        while True:
            await self._reconnect(ctx, attempt)
            try:
                return await self.session.capture(script)
            except ConnectionLost:
                attempt += 1

    async def _reconnect(self, ctx: OpContext, attempt: int) -> None:
        while True:
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            if time.monotonic() + delay > ctx.deadline:
                raise ConnectionLost(self.host.name, "could not reconnect before the op's timeout")
            await asyncio.sleep(delay)
            try:
                await self.session.reconnect()
            except ConnectionLost:
                attempt += 1
                continue
            except Exception as exc:  # ConnectError and friends: keep trying until the deadline
                ctx.note(f"reconnect failed: {exc}")
                attempt += 1
                continue
            ctx.note("reconnected; collecting the rest of the output")
            return

    async def _stop_detached(self, ctx: OpContext, directory: str, pid: int) -> None:
        """On cancel or timeout: stop the build, never an activation that has begun."""
        script = self.privilege.script(detach.cancel_script(directory, pid))
        try:
            async with asyncio.timeout(10):
                _, out = await asyncio.shield(self.session.capture(script))
        except (TimeoutError, Exception) as exc:
            ctx.note(f"could not stop the detached process: {exc}")
            return
        verdict = out.decode(errors="replace").strip()
        if verdict == "activation-begun":
            ctx.note("activation had begun: left running to completion (not killed)")
        elif verdict == "stopped":
            ctx.note("activation had not begun: the build was stopped")
        else:
            ctx.note("the detached process had already finished")


class TailBuffer:
    """The last `limit` bytes of a stream (for errors and the store's tail)."""

    def __init__(self, limit: int = 64 * 1024) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > 2 * self.limit:
            joined = b"".join(self._chunks)[-self.limit :]
            self._chunks, self._size = [joined], len(joined)

    @property
    def data(self) -> bytes:
        return b"".join(self._chunks)[-self.limit :]

    def lines(self, n: int = 20) -> str:
        text = self.data.decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-n:])
