"""The views of a run that write one line per event: for a stream that is not a terminal, and
for `--json`. Subscribers to the executor's events that only write to their stream.

    PlainView     one line of text per event (`[alpha] pull: SUCCESS (1.2s)`), op output too
                  with `verbose`
    JsonProgress  `--json` mode: one compact JSON object per event (`event_json`), for stderr
"""

from __future__ import annotations

import json

from fleet.cli.tables import counts_text, describe_result
from fleet.cli.text import (
    TextSink,
    color_enabled,
    encodable,
    format_duration,
    one_line,
    output_line,
    paint,
    seconds_between,
    status_style,
)
from fleet.events import (
    Event,
    HostFinished,
    OpFinished,
    OpNote,
    OpOutput,
    OpSlow,
    OpStarted,
    RunFinished,
    RunStarted,
    event_json,
)
from fleet.models import CONTROLLER, HostResult, HostStatus, Run

__all__ = ["MAX_OUTPUT_LINE", "JsonProgress", "PlainView"]

MAX_OUTPUT_LINE = 8192  # bytes of one output line kept before it is printed in pieces


def _who(host: str | None) -> str:
    return host if host is not None else CONTROLLER


class PlainView:
    """One line per event, prefixed with the host: `[alpha] pull: SUCCESS (1.2s)`.

    With `verbose`, op output too (`[alpha] switch| ...`), made safe and split into lines per
    (host, op); a partial line is kept until its newline, up to `MAX_OUTPUT_LINE` bytes.
    """

    def __init__(
        self, stream: TextSink, *, verbose: bool = False, color: bool | None = None
    ) -> None:
        self._stream = stream
        self._verbose = verbose
        self._color = color_enabled(stream, color)
        self._partial: dict[tuple[str | None, str], bytes] = {}

    def __call__(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._write(self._run_started(event))
            case OpStarted():
                attempt = f" (attempt {event.attempt})" if event.attempt > 1 else ""
                self._op_line(event.host, event.op, f"started{attempt}")
            case OpOutput():
                if self._verbose:
                    self._output(event.host, event.op, event.data)
            case OpSlow():
                running = f"slow, running for {format_duration(event.elapsed)}"
                self._op_line(event.host, event.op, running)
            case OpNote():
                self._op_line(event.host, event.op, one_line(event.message))
            case OpFinished(result=result):
                self._flush_output(event.host, result.op)
                status, text = result.status.value, describe_result(result)
                self._op_line(
                    event.host, result.op, self._paint_status(status) + text[len(status) :]
                )
            case HostFinished(result=result):
                self._host_finished(result)
            case RunFinished(run=run):
                for host, op in list(self._partial):
                    self._flush_output(host, op)
                self._write(self._run_finished(run))

    def _paint_status(self, status: str) -> str:
        return paint(status, status_style(status), self._color)

    def _host_finished(self, result: HostResult) -> None:
        status = self._paint_status(result.status.value)
        if result.status is HostStatus.FAILED:
            line = f"[{result.name}] excluded: {status}"
            line += f" at {result.failed_op}" if result.failed_op else ""
        else:
            line = f"[{result.name}] done: {status}"
        self._write(line + (" (rolled back)" if result.rolled_back else ""))

    def _run_started(self, event: RunStarted) -> str:
        run = event.run
        line = f"run {run.run_id} started: {run.pipeline} on {len(run.hosts)} hosts"
        line += f": {', '.join(event.ops)}" if event.ops else ""
        if event.controller_ops:
            line += f" (controller: {', '.join(event.controller_ops)})"
        return line + (f" (retry of {run.retry_of})" if run.retry_of else "")

    def _run_finished(self, run: Run) -> str:
        line = f"run {run.run_id} finished: {self._paint_status(run.status.value)}"
        took = format_duration(seconds_between(run.started_at, run.finished_at))
        line += f" in {took}" if took else ""
        counts = counts_text(h.status for h in run.hosts.values())
        return line + (f" ({counts})" if counts else "")

    def _op_line(self, host: str | None, op: str, text: str) -> None:
        self._write(f"[{_who(host)}] {op}: {text}")

    def _output(self, host: str | None, op: str, data: bytes) -> None:
        key = (host, op)
        *lines, rest = (self._partial.pop(key, b"") + data).split(b"\n")
        pieces = [piece for line in lines for piece in _split_long(line)]
        if len(rest) > MAX_OUTPUT_LINE:
            *more, rest = _split_long(rest)
            pieces += more
        if rest:
            self._partial[key] = rest
        for piece in pieces:
            self._write(f"[{_who(host)}] {op}| {output_line(piece)}")

    def _flush_output(self, host: str | None, op: str) -> None:
        rest = self._partial.pop((host, op), b"")
        if rest:
            self._write(f"[{_who(host)}] {op}| {output_line(rest)}")

    def _write(self, line: str) -> None:
        self._stream.write(encodable(line + "\n", self._stream))
        self._stream.flush()


def _split_long(line: bytes) -> list[bytes]:
    """`line` in pieces of at most MAX_OUTPUT_LINE bytes, not cutting a UTF-8 sequence."""
    pieces = []
    while len(line) > MAX_OUTPUT_LINE:
        cut = MAX_OUTPUT_LINE
        while cut > MAX_OUTPUT_LINE - 4 and line[cut] & 0xC0 == 0x80:
            cut -= 1
        pieces.append(line[:cut])
        line = line[cut:]
    return [*pieces, line]


class JsonProgress:
    """`--json` progress: one compact JSON object per event (op output is left out)."""

    def __init__(self, stream: TextSink) -> None:
        self._stream = stream

    def __call__(self, event: Event) -> None:
        record = event_json(event, full=False)
        if record is not None:
            self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._stream.flush()
