"""The tables fleet prints (`render_table`) and the end-of-run summary (`render_summary`).

The summary's pieces that the views of a run share live here too: how long a host took
(`host_duration`), which op failed it (`failing_op`), one op's result on a line
(`describe_result`) and the hosts counted by status (`counts_text`). Safe text, colour and
widths come from `fleet.cli.text`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

from fleet.cli.text import (
    BOLD,
    Styled,
    cell_width,
    format_duration,
    one_line,
    paint,
    sanitize_lines,
    seconds_between,
    status_style,
    truncate,
)
from fleet.models import CONTROLLER, HostResult, HostStatus, OpResult, OpStatus, Run

TAIL_LINES = 20
TAIL_LINE_CHARS = 1000  # of one line of a failure's output in the summary

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


def op_short(status: OpStatus) -> str:
    return _OP_SHORT[status]


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
            tail = _read_tail(CONTROLLER, result, read_tail)
            blocks.append("\n".join(_tail_block(CONTROLLER, result, tail, color)))
    for name, host in run.hosts.items():
        failed = failing_op(host) if host.status is HostStatus.FAILED else None
        if failed is not None:
            tail = _read_tail(name, failed, read_tail)
            blocks.append("\n".join(_tail_block(name, failed, tail, color)))
        elif host.status is HostStatus.FAILED:
            blocks.append(f"{paint(name, BOLD, color)}: FAILED (no op failed; see the log)")
    blocks.append(_status_line(run, color))
    return "\n\n".join(blocks) + "\n"
