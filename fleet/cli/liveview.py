"""The view of a run on a terminal: a block of one line per host, redrawn in place, sized to fit.

`LiveView` subscribes to the executor's events and only writes to its stream.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleet.cli.tables import host_duration, status_counts
from fleet.cli.text import (
    BOLD,
    DIM,
    Styled,
    TextSink,
    color_enabled,
    encodable,
    fit,
    format_clock,
    format_duration,
    pad,
    seconds_between,
    status_style,
)
from fleet.events import (
    Event,
    HostFinished,
    OpFinished,
    OpSlow,
    OpStarted,
    RunFinished,
    RunStarted,
)
from fleet.models import CONTROLLER, HostResult, HostStatus, OpStatus, Run

__all__ = ["LiveView"]

# The order hosts are shown in when they do not all fit: the ones worth seeing first.
_PRIORITY = {
    HostStatus.RUNNING: 0,
    HostStatus.FAILED: 1,
    HostStatus.CANCELLED: 2,
    HostStatus.PENDING: 3,
    HostStatus.COMPLETE: 4,
}
_HEADER_ORDER = (
    HostStatus.RUNNING,
    HostStatus.COMPLETE,
    HostStatus.FAILED,
    HostStatus.CANCELLED,
    HostStatus.PENDING,
)


@dataclass(eq=False)
class _Line:
    """What the live block knows about one host (or the controller)."""

    name: str
    status: HostStatus = HostStatus.PENDING
    op: str | None = None
    op_status: OpStatus | None = None
    attempt: int = 1
    slow: bool = False
    op_started: float | None = None
    op_elapsed: float | None = None  # set when the op finished
    started: float | None = None
    elapsed: float | None = None  # set when the host finished


@dataclass
class _Layout:
    width: int
    name: int
    op: int
    color: bool


class LiveView:
    """A live block of one line per host, redrawn in place at most every `interval` seconds.

    Events redraw it (throttled); call `refresh()` periodically so elapsed times tick. When the
    hosts do not fit in the terminal's height - 1 lines, the ones worth seeing come first
    (running, failed, pending, complete) and a `… and N more (M complete)` line ends the block.
    On RunFinished (or `stop()`) the final state is drawn once and the block stops.
    """

    def __init__(
        self,
        stream: TextSink,
        *,
        hosts: Sequence[str],
        ops: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
        height: int | None = None,
        width: int | None = None,
        color: bool | None = None,
        interval: float = 0.1,
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._height = height
        self._width = width
        self._color = color_enabled(stream, color)
        self._interval = interval
        self._host_ops: Sequence[str] = tuple(ops)
        self._controller_ops: Sequence[str] = ()
        self._hosts = {name: _Line(name) for name in hosts}
        self._controller = _Line(CONTROLLER)
        self._pipeline = "fleet"
        self._run_started = clock()
        self._stopped_at: float | None = None
        self._last_draw: float | None = None
        self._drawn = 0

    # -- events

    def __call__(self, event: Event) -> None:
        if self._stopped_at is not None:
            return
        now = self._clock()
        match event:
            case RunStarted():
                self._on_run_started(event, now)
            case OpStarted():
                self._on_op_started(event, now)
            case OpSlow():
                self._line(event.host).slow = True
            case OpFinished():
                line = self._line(event.host)
                result = event.result
                line.op, line.op_status = result.op, result.status
                took = seconds_between(result.started_at, result.finished_at)
                if took is None and line.op_started is not None:
                    took = now - line.op_started
                line.op_elapsed = took
            case HostFinished():
                self._finish_host(self._line(event.result.name), event.result, now)
            case RunFinished():
                self._on_run_finished(event.run, now)
                return
            case _:
                return
        self.refresh()

    def _on_run_started(self, event: RunStarted, now: float) -> None:
        self._pipeline = event.run.pipeline
        self._run_started = now
        for name in event.run.hosts:
            self._hosts.setdefault(name, _Line(name))
        if event.ops:
            self._host_ops = event.ops
        self._controller_ops = event.controller_ops

    def _on_op_started(self, event: OpStarted, now: float) -> None:
        line = self._line(event.host)
        line.status = HostStatus.RUNNING
        line.op, line.op_status, line.attempt = event.op, OpStatus.RUNNING, event.attempt
        line.slow, line.op_started, line.op_elapsed = False, now, None
        if line.started is None:
            line.started = now

    def _line(self, host: str | None) -> _Line:
        if host is None:
            return self._controller
        return self._hosts.setdefault(host, _Line(host))

    def _finish_host(self, line: _Line, result: HostResult, now: float) -> None:
        line.status = result.status
        if result.failed_op:
            line.op = result.failed_op
        if line.elapsed is None:
            line.elapsed = host_duration(result)
        if line.elapsed is None and line.started is not None:
            line.elapsed = now - line.started

    def _on_run_finished(self, run: Run, now: float) -> None:
        self._pipeline = run.pipeline
        for name, result in run.hosts.items():
            self._finish_host(self._line(name), result, now)
        for op in run.controller_ops:
            if op.op == self._controller.op:
                self._controller.op_status = op.status
        self.stop()

    # -- drawing

    def refresh(self) -> None:
        """Redraw, unless the block was drawn less than `interval` seconds ago or stopped."""
        if self._stopped_at is not None:
            return
        now = self._clock()
        if self._last_draw is None or now - self._last_draw >= self._interval:
            self._draw(now)

    def stop(self) -> None:
        """Draw the final state once; later events and refreshes are ignored."""
        if self._stopped_at is None:
            self._stopped_at = self._clock()
            self._draw(self._stopped_at)

    def _draw(self, now: float) -> None:
        lines = self.render()
        parts = [f"\r\x1b[{self._drawn}A"] if self._drawn else []
        parts += [f"\x1b[2K{line}\n" for line in lines]
        parts.append("\x1b[J")
        self._stream.write(encodable("".join(parts), self._stream))
        self._stream.flush()
        self._drawn = len(lines)
        self._last_draw = now

    def _size(self) -> tuple[int, int]:
        if self._width is not None and self._height is not None:
            return self._width, self._height
        size = shutil.get_terminal_size()
        return self._width or size.columns, self._height or size.lines

    def render(self) -> list[str]:
        """The lines of the block as it stands now (without cursor movement)."""
        now = self._stopped_at if self._stopped_at is not None else self._clock()
        width, height = self._size()
        max_lines = max(1, height - 1)
        layout = self._layout(width - 1)
        lines = [self._header(now, layout)]
        controller = self._controller
        if controller.op_status is OpStatus.RUNNING or (
            controller.op_status is not None and controller.op_status.failed
        ):
            lines.append(self._host_line(controller, now, layout, self._controller_ops))
        hosts, hidden = _visible(list(self._hosts.values()), max_lines - len(lines))
        lines += [self._host_line(h, now, layout, self._host_ops) for h in hosts]
        if hidden:
            complete = sum(h.status is HostStatus.COMPLETE for h in hidden)
            more = f"… and {len(hidden)} more ({complete} complete)"
            lines.append(fit([Styled(more, DIM)], layout.width, color=layout.color))
        return lines[:max_lines]

    def _layout(self, width: int) -> _Layout:
        names = list(self._hosts)
        if self._controller_ops:
            names.append(CONTROLLER)
        labels = [
            _op_label(op, ops, 1) for ops in (self._host_ops, self._controller_ops) for op in ops
        ]
        labels += [_op_label(h.op, self._host_ops, h.attempt) for h in self._hosts.values() if h.op]
        return _Layout(
            width=width,
            name=min(max((len(n) for n in names), default=0), 24),
            op=min(max((len(label) for label in labels), default=0), 32),
            color=self._color,
        )

    def _header(self, now: float, layout: _Layout) -> str:
        counts = status_counts(h.status for h in self._hosts.values())
        segments = [Styled(self._pipeline, BOLD), Styled("  ")]
        for status in (s for s in _HEADER_ORDER if counts[s]):
            if len(segments) > 2:
                segments.append(Styled(" · "))
            text = f"{counts[status]} {status.value.lower()}"
            segments.append(Styled(text, status_style(status) or ""))
        segments.append(Styled(f"  {format_clock(now - self._run_started)}"))
        return fit(segments, layout.width, color=layout.color)

    def _host_line(self, line: _Line, now: float, layout: _Layout, ops: Sequence[str]) -> str:
        label = _op_label(line.op, ops, line.attempt) if line.op is not None else ""
        elapsed = ""
        if line.status.finished:
            elapsed = format_duration(line.elapsed)
            status = line.status.value
        elif line.op_status is OpStatus.RUNNING and line.op_started is not None:
            elapsed = format_duration(now - line.op_started)
            status = line.status.value
        elif line.op_status is not None and line.op_status.failed:
            elapsed, status = format_duration(line.op_elapsed), line.op_status.value
        elif line.op_status is not None:
            elapsed, status = format_duration(line.op_elapsed), "WAITING"
        else:
            status = line.status.value
        segments = [
            Styled(pad(line.name, layout.name) + "  "),
            Styled(pad(label, layout.op), DIM if line.status.finished else ""),
            Styled("  " + pad(elapsed, 6, right=True) + "  "),
            Styled(status, status_style(status) or ""),
        ]
        if line.slow and line.op_status is OpStatus.RUNNING:
            segments.append(Styled(" slow", status_style("SLOW") or ""))
        return fit(segments, layout.width, color=layout.color)


def _visible(hosts: list[_Line], room: int) -> tuple[list[_Line], list[_Line]]:
    """The hosts to show in `room` lines and the ones left to the `… and N more` line.

    All of them, in order, when they fit. Otherwise running, failed, pending, complete ones,
    with at least half of the lines kept for failed hosts when there are any.
    """
    if len(hosts) <= room:
        return hosts, []
    keep = max(0, room - 1)
    ordered = sorted(hosts, key=lambda h: _PRIORITY[h.status])
    running = [h for h in ordered if h.status is HostStatus.RUNNING]
    others = ordered[len(running) :]
    failed = sum(h.status in (HostStatus.FAILED, HostStatus.CANCELLED) for h in others)
    n_running = min(len(running), max(keep - failed, keep - keep // 2))
    shown = running[:n_running] + others[: keep - n_running]
    return shown, [h for h in ordered if h not in shown]


def _op_label(op: str, ops: Sequence[str], attempt: int) -> str:
    """`switch (2/3)`, with `#2` for a second attempt; an op outside `ops` goes bare."""
    label = f"{op} ({ops.index(op) + 1}/{len(ops)})" if op in ops else op
    return f"{label} #{attempt}" if attempt > 1 else label
