"""Text for the terminal: safe remote output, colour, widths, tables and the run summary.

Everything a host prints reaches the user through `sanitize_lines`/`output_line`: bytes are
decoded as UTF-8 with replacement, escape sequences and control characters (except tab) are
removed, so a binary or an escape-sequence flood from a host can never garble the terminal.
Colour is plain ANSI SGR, applied only when the caller says so (`color_enabled`).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

from fleet.models import HostResult, HostStatus, OpResult, OpStatus, Run

# CSI, OSC, DCS/SOS/PM/APC strings, 8-bit CSI and the remaining two-character escapes.
_ESCAPE_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
)
# C0 (but tab), DEL, C1, the bidi overrides/isolates that reorder what follows them, and lone
# surrogates (which a strict UTF-8 stream refuses to encode).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

TAIL_LINES = 20
TAIL_LINE_CHARS = 1000  # of one line of a failure's output in the summary

# SGR parameters by status value (host, op and view-only statuses share one palette).
STATUS_STYLES = {
    "RUNNING": "36",
    "SUCCESS": "32",
    "COMPLETE": "32",
    "FAILED": "1;31",
    "TIMEOUT": "1;31",
    "CANCELLED": "33",
    "SKIPPED": "33",
    "PENDING": "2",
    "WAITING": "2",
    "SLOW": "1;33",
}
BOLD = "1"
DIM = "2"

CONTROLLER = "controller"  # the name the views show for the controller (ops with no host)

_OP_SHORT = {
    OpStatus.PENDING: "-",
    OpStatus.RUNNING: "run",
    OpStatus.SUCCESS: "ok",
    OpStatus.FAILED: "FAIL",
    OpStatus.TIMEOUT: "TIMEOUT",
    OpStatus.SKIPPED: "skip",
    OpStatus.CANCELLED: "cancel",
}


# ---------------------------------------------------------------------------------------------
# Safe text


def sanitize(text: str) -> str:
    """`text` without escape sequences or control characters (tab is kept)."""
    return _CONTROL_RE.sub("", _ESCAPE_RE.sub("", text))


def one_line(text: str) -> str:
    """`text` as a single safe line: line breaks and tabs become spaces."""
    return sanitize(re.sub(r"[\t\r\n]+", " ", text)).strip()


def output_line(raw: bytes | str) -> str:
    """One line of a command's output as a terminal would leave it, made safe.

    A trailing CR (CRLF) is dropped; for a progress bar redrawn with bare CRs the last
    non-empty segment wins.
    """
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.rstrip("\r")
    if "\r" in text:
        text = next((part for part in reversed(text.split("\r")) if part), "")
    return sanitize(text)


def sanitize_lines(text: str) -> list[str]:
    """`text` (a tail or a log) as safe lines, without trailing blank lines."""
    lines = [output_line(line) for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def color_enabled(stream: TextIO, color: bool | None = None) -> bool:
    """Colour when asked to, else when `stream` is a TTY and NO_COLOR is unset (or empty)."""
    if color is not None:
        return color
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def encodable(text: str, stream: TextIO) -> str:
    """`text` with what `stream`'s encoding cannot represent replaced (a view must not raise)."""
    encoding = getattr(stream, "encoding", None)
    if not encoding or "utf" in encoding.lower():
        return text
    return text.encode(encoding, errors="replace").decode(encoding)


def paint(text: str, sgr: str | None, color: bool) -> str:
    if not (color and sgr and text):
        return text
    return f"\x1b[{sgr}m{text}\x1b[0m"


def status_style(status: str) -> str | None:
    return STATUS_STYLES.get(status)


def op_short(status: OpStatus) -> str:
    return _OP_SHORT[status]


# ---------------------------------------------------------------------------------------------
# Widths


def char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cell_width(text: str) -> int:
    """How many terminal cells `text` (without escape sequences) takes."""
    return sum(char_width(c) for c in text)


def _prefix(text: str, width: int) -> str:
    """The longest start of `text` that fits in `width` cells."""
    out: list[str] = []
    for char in text:
        width -= char_width(char)
        if width < 0:
            break
        out.append(char)
    return "".join(out)


def truncate(text: str, width: int, ellipsis: str = "…") -> str:
    """`text` cut to at most `width` cells, ending in `ellipsis` when cut."""
    if cell_width(text) <= width:
        return text
    if width <= 0:
        return ""
    return _prefix(text, width - cell_width(ellipsis)) + ellipsis


def pad(text: str, width: int, *, right: bool = False) -> str:
    fill = " " * max(0, width - cell_width(text))
    return fill + text if right else text + fill


@dataclass(frozen=True)
class Styled:
    """A piece of text with an SGR style ("" for none); painted only when colour is on."""

    text: str
    style: str = ""


def fit(segments: Iterable[Styled], width: int, *, color: bool) -> str:
    """Render `segments` as one line of at most `width` cells (an ellipsis marks a cut)."""
    parts = list(segments)
    if sum(cell_width(s.text) for s in parts) > width:
        budget, cut = width - 1, []
        for seg in parts:
            text = _prefix(seg.text, budget)
            budget -= cell_width(text)
            if text != seg.text:
                cut.append(Styled(text + "…", seg.style))
                break
            cut.append(seg)
        parts = cut if width > 0 else []
    return "".join(paint(s.text, s.style, color) for s in parts).rstrip(" ")


# ---------------------------------------------------------------------------------------------
# Durations


def format_duration(seconds: float | None) -> str:
    """1.2s, 2m03s, 1h05m; "" when unknown."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 59.95:  # what rounds to 60.0s is shown as 1m00s
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_clock(seconds: float) -> str:
    """02:13, or 1:02:13 past an hour."""
    whole = int(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    if hours:
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{rest // 60:02d}:{rest % 60:02d}"


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


# ---------------------------------------------------------------------------------------------
# Tables

Cell = str | Styled


def _column_widths(
    table: list[list[Styled]], max_width: int | None, max_col_width: int
) -> list[int]:
    widths = [
        min(max(cell_width(row[i].text) for row in table), max_col_width)
        for i in range(len(table[0]))
    ]
    if max_width is None:
        return widths
    floors = [min(w, 4) for w in widths]
    while sum(widths) + 2 * (len(widths) - 1) > max_width:
        roomiest = max(range(len(widths)), key=lambda i: widths[i] - floors[i])
        if widths[roomiest] <= floors[roomiest]:
            break
        widths[roomiest] -= 1
    return widths


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    *,
    max_width: int | None = None,
    max_col_width: int = 60,
    right: Collection[int] = (),
    color: bool = False,
) -> str:
    """An aligned, two-space separated table; cells are made single-line and safe.

    Columns wider than `max_col_width`, or the widest ones when the table is wider than
    `max_width`, are truncated with an ellipsis. `right` holds the columns to right-align.
    """
    table = [[Styled(h, BOLD) for h in headers]]
    for row in rows:
        cells = [c if isinstance(c, Styled) else Styled(c) for c in row]
        cells += [Styled("")] * (len(headers) - len(cells))
        table.append([Styled(one_line(c.text), c.style) for c in cells[: len(headers)]])
    widths = _column_widths(table, max_width, max_col_width)
    lines = []
    for row in table:
        out = []
        for i, cell in enumerate(row):
            text = truncate(cell.text, widths[i])
            fill = " " * (widths[i] - cell_width(text))
            painted = paint(text, cell.style, color)
            out.append(fill + painted if i in right else painted + fill)
        lines.append("  ".join(out).rstrip(" "))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The run summary

ReadTail = Callable[[str, str], str]


def _op_names(run: Run) -> list[str]:
    names: dict[str, None] = {}
    for host in run.hosts.values():
        names.update((o.op, None) for o in host.ops)
    return list(names)


def host_duration(host: HostResult) -> float | None:
    """From its first op's start to its last op's end."""
    starts = [o.started_at for o in host.ops if o.started_at]
    ends = [o.finished_at for o in host.ops if o.finished_at]
    return seconds_between(min(starts), max(ends)) if starts and ends else None


def failing_op(host: HostResult) -> OpResult | None:
    """The op that made `host` fail: its `failed_op`, else its first failed op."""
    for result in host.ops:
        if result.op == host.failed_op:
            return result
    return next((r for r in host.ops if r.status.failed), None)


def describe_result(result: OpResult) -> str:
    """`FAILED exit 1 (3.0s): error`, `SUCCESS (1.2s)`, `SKIPPED`... on one line."""
    text = result.status.value
    if result.status.failed and result.exit_code is not None:
        text += f" exit {result.exit_code}"
    details = [format_duration(seconds_between(result.started_at, result.finished_at))]
    if result.attempts > 1:
        details.append(f"{result.attempts} attempts")
    details = [d for d in details if d]
    if details:
        text += f" ({', '.join(details)})"
    if result.error and result.status is not OpStatus.SUCCESS:
        text += f": {one_line(result.error)}"
    return text


def status_counts(statuses: Iterable[HostStatus]) -> dict[HostStatus, int]:
    counts = dict.fromkeys(HostStatus, 0)
    for status in statuses:
        counts[status] += 1
    return counts


def counts_text(statuses: Iterable[HostStatus]) -> str:
    """`2 complete, 1 failed` (finished states first; zero counts left out)."""
    counts = status_counts(statuses)
    order = (
        HostStatus.COMPLETE,
        HostStatus.FAILED,
        HostStatus.CANCELLED,
        HostStatus.RUNNING,
        HostStatus.PENDING,
    )
    return ", ".join(f"{counts[s]} {s.value.lower()}" for s in order if counts[s])


def _summary_table(run: Run, color: bool, width: int | None) -> str:
    ops = _op_names(run)
    rows: list[list[Cell]] = []
    for name, host in run.hosts.items():
        by_op = {o.op: o.status for o in host.ops}
        cells: list[Cell] = [name, Styled(host.status.value, status_style(host.status) or "")]
        for op in ops:
            status = by_op.get(op, OpStatus.PENDING)
            cells.append(Styled(op_short(status), status_style(status) or ""))
        cells += [host.failed_op or "", format_duration(host_duration(host))]
        rows.append(cells)
    headers = ["HOST", "STATUS", *ops, "FAILED OP", "DURATION"]
    return render_table(headers, rows, max_width=width, right={len(headers) - 1}, color=color)


def _status_line(run: Run, color: bool) -> str:
    counts = counts_text(h.status for h in run.hosts.values())
    status = paint(run.status.value, status_style(run.status), color)
    line = f"run {run.run_id} ({run.pipeline}): {status}"
    line += f"  {counts or 'no hosts'} of {len(run.hosts)} hosts"
    took = format_duration(seconds_between(run.started_at, run.finished_at))
    if took:
        line += f" in {took}"
    if run.retry_of:
        line += f"  (retry of {run.retry_of})"
    return line


def _tail_block(title: str, result: OpResult, tail: str, color: bool) -> list[str]:
    lines = [f"{paint(title, BOLD, color)}: {result.op} {describe_result(result)}"]
    if result.log:
        lines.append(f"  log: {one_line(result.log)}")
    output = sanitize_lines(tail)[-TAIL_LINES:]
    lines += [f"  | {_shortened(line)}" for line in output] or ["  (no output)"]
    return lines


def _shortened(line: str) -> str:
    """A summary's output line, at most about TAIL_LINE_CHARS characters (the log has it all)."""
    if len(line) <= TAIL_LINE_CHARS:
        return line
    return f"{line[:TAIL_LINE_CHARS]}... ({len(line) - TAIL_LINE_CHARS} more characters)"


def _read_tail(host: str, result: OpResult, read_tail: ReadTail | None) -> str:
    if read_tail is None:
        return result.tail
    try:
        return read_tail(host, result.op) or result.tail
    except OSError:
        return result.tail


def render_summary(
    run: Run,
    *,
    read_tail: ReadTail | None = None,
    color: bool = False,
    width: int | None = None,
) -> str:
    """The end-of-run summary: per-host table, controller ops, failures' output, status line.

    For each failed host (and failed controller op) the last 20 lines of the failing op's
    output are shown, read with `read_tail(host, op)` when given (host "controller" for a
    controller op), else from `OpResult.tail`.
    """
    blocks = [_summary_table(run, color, width)] if run.hosts else []
    if run.controller_ops:
        ops = ", ".join(
            f"{o.op} {paint(op_short(o.status), status_style(o.status), color)}"
            for o in run.controller_ops
        )
        blocks.append(f"controller: {ops}")
    for result in run.controller_ops:
        if result.status.failed:
            tail = _read_tail("controller", result, read_tail)
            blocks.append("\n".join(_tail_block("controller", result, tail, color)))
    for name, host in run.hosts.items():
        failed = failing_op(host) if host.status is HostStatus.FAILED else None
        if failed is not None:
            tail = _read_tail(name, failed, read_tail)
            blocks.append("\n".join(_tail_block(name, failed, tail, color)))
        elif host.status is HostStatus.FAILED:
            blocks.append(f"{paint(name, BOLD, color)}: FAILED (no op failed; see the log)")
    blocks.append(_status_line(run, color))
    return "\n\n".join(blocks) + "\n"
