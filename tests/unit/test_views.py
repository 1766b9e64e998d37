"""The terminal views, fed synthetic event sequences and writing to StringIO."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from fleet.cli.lineviews import MAX_OUTPUT_LINE, JsonProgress, PlainView
from fleet.cli.liveview import LiveView
from fleet.cli.tables import TAIL_LINES, render_summary, render_table
from fleet.cli.text import (
    Styled,
    cell_width,
    color_enabled,
    format_clock,
    format_duration,
    one_line,
    output_line,
    sanitize,
    truncate,
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
    Subscriber,
)
from fleet.models import HostResult, HostStatus, OpResult, OpStatus, Run, RunStatus

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OPS = ("pull", "switch", "test")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def visible(text: str) -> str:
    return ANSI.sub("", text)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_of(names: Iterable[str], retry_of: str | None = None) -> Run:
    hosts = {n: HostResult(n) for n in names}
    return Run("R1", "do-all", started_at=T0, hosts=hosts, retry_of=retry_of)


def op_result(
    op: str,
    status: OpStatus,
    start: float,
    end: float,
    *,
    exit_code: int | None = None,
    error: str | None = None,
    tail: str = "",
) -> OpResult:
    return OpResult(
        op,
        status,
        exit_code=exit_code,
        started_at=at(start),
        finished_at=at(end),
        error=error,
        tail=tail,
    )


def feed(view: Subscriber, events: Iterable[Event]) -> None:
    for event in events:
        view(event)


def screen(output: str) -> list[str]:
    """What a terminal shows after `output`: text, \\n, \\r, ESC[nA, ESC[2K, ESC[J, SGR."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", output):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            arg, kind = token[2:-1], token[-1]
            if kind == "A":
                row = max(0, row - int(arg or 1))
            elif kind == "K":
                lines[row] = ""
            elif kind == "J":
                lines[row] = lines[row][:col]
                del lines[row + 1 :]
        else:
            line = lines[row]
            lines[row] = line[:col].ljust(col) + token + line[col + len(token) :]
            col += len(token)
    while lines and not lines[-1]:
        lines.pop()
    return lines


# ---------------------------------------------------------------------------------------------
# A 50-host run: 12 running, 30 complete, 3 failed, 5 pending


NAMES = [f"host{i:02d}" for i in range(50)]
RUNNING = NAMES[0:12]
COMPLETE = NAMES[12:42]
FAILED = NAMES[42:45]
PENDING = NAMES[45:50]


def fifty_host_events() -> list[Event]:
    events: list[Event] = [RunStarted(run_of(NAMES), ops=OPS)]
    for name in COMPLETE:
        results = tuple(op_result(op, OpStatus.SUCCESS, i, i + 1) for i, op in enumerate(OPS))
        for result in results:
            events.append(OpStarted("R1", name, result.op, T0))
            events.append(OpFinished("R1", name, result))
        events.append(HostFinished("R1", HostResult(name, HostStatus.COMPLETE, ops=results)))
    for name in FAILED:
        pull = op_result("pull", OpStatus.SUCCESS, 0, 1)
        switch = op_result("switch", OpStatus.FAILED, 1, 4, exit_code=1, error="boom")
        events += [OpStarted("R1", name, "pull", T0), OpFinished("R1", name, pull)]
        events += [OpStarted("R1", name, "switch", T0), OpFinished("R1", name, switch)]
        events.append(
            HostFinished(
                "R1", HostResult(name, HostStatus.FAILED, failed_op="switch", ops=(pull, switch))
            )
        )
    events += [OpStarted("R1", name, "test", T0) for name in RUNNING]
    return events


def test_live_view_fits_fifty_hosts_in_a_24_row_terminal() -> None:
    clock, out = Clock(), io.StringIO()
    view = LiveView(out, hosts=NAMES, ops=OPS, clock=clock, height=24, width=80)
    feed(view, fifty_host_events())
    clock.now = 133.0

    lines = view.render()

    assert len(lines) <= 23
    assert lines[0] == "do-all  12 running · 30 complete · 3 failed · 5 pending  02:13"
    shown = [line.split()[0] for line in lines[1:-1]]
    assert shown[:12] == RUNNING
    assert shown[12:15] == FAILED
    assert shown[15:20] == PENDING
    assert lines[-1] == f"… and {50 - len(shown)} more ({50 - len(shown)} complete)"
    assert len(lines) == 23


def test_live_view_host_lines() -> None:
    clock, out = Clock(), io.StringIO()
    view = LiveView(out, hosts=NAMES, ops=OPS, clock=clock, height=24, width=80)
    feed(view, fifty_host_events())
    clock.now = 133.0
    lines = {line.split()[0]: line for line in view.render()[1:-1]}

    assert lines["host00"] == "host00  test (3/3)     2m13s  RUNNING"
    assert lines["host42"] == "host42  switch (2/3)    4.0s  FAILED"
    assert lines["host45"] == "host45" + " " * 24 + "PENDING"


def test_live_view_keeps_failed_hosts_visible_when_running_hosts_overflow() -> None:
    names = [f"h{i:02d}" for i in range(50)]
    view = LiveView(io.StringIO(), hosts=names, ops=OPS, clock=Clock(), height=24, width=80)
    view(RunStarted(run_of(names), ops=OPS))
    for name in names[:45]:
        view(OpStarted("R1", name, "pull", T0))
    for name in names[45:]:
        view(HostFinished("R1", HostResult(name, HostStatus.FAILED, failed_op="pull")))

    lines = view.render()

    assert len(lines) == 23
    assert lines[0] == "do-all  45 running · 5 failed  00:00"
    assert all(any(line.startswith(name) for line in lines) for name in names[45:])
    assert lines[-1] == "… and 29 more (0 complete)"


@pytest.mark.parametrize(("height", "width"), [(24, 80), (10, 40), (3, 30), (2, 20), (1, 10)])
def test_live_view_never_exceeds_the_terminal(height: int, width: int) -> None:
    names = [f"a-rather-long-host-name-{i:02d}.example" for i in range(50)]
    clock, out = Clock(), io.StringIO()
    view = LiveView(out, hosts=names, ops=OPS, clock=clock, height=height, width=width, color=True)
    view(RunStarted(run_of(names), ops=OPS, controller_ops=("merge-pr",)))
    view(OpStarted("R1", None, "merge-pr", T0))
    for name in names[:20]:
        view(OpStarted("R1", name, "a-long-op-name-indeed", T0, attempt=3))
        view(OpSlow("R1", name, "a-long-op-name-indeed", 700.0))
    clock.now = 5000.0

    lines = view.render()

    assert len(lines) <= max(1, height - 1)
    assert all(cell_width(visible(line)) < width for line in lines)
    assert any("\x1b[" in line for line in lines)  # colour was asked for


def test_live_view_redraws_in_place() -> None:
    clock, out = Clock(), io.StringIO()
    view = LiveView(out, hosts=NAMES, ops=OPS, clock=clock, height=24, width=80)
    for event in fifty_host_events():
        clock.now += 0.25
        view(event)
    frames = out.getvalue().split("\x1b[J")

    assert len(frames) > 100
    assert all(frame.count("\n") <= 23 for frame in frames)
    assert screen(out.getvalue()) == view.render()


def test_live_view_throttles_redraws() -> None:
    clock, out = Clock(), io.StringIO()
    view = LiveView(out, hosts=["a", "b"], ops=OPS, clock=clock, height=24, width=80)
    view(RunStarted(run_of(["a", "b"]), ops=OPS))
    view(OpStarted("R1", "a", "pull", T0))
    view(OpStarted("R1", "b", "pull", T0))
    view.refresh()
    assert out.getvalue().count("\x1b[J") == 1

    clock.now = 0.1
    view.refresh()
    assert out.getvalue().count("\x1b[J") == 2
    view(OpOutput("R1", "a", "pull", b"no redraw for output\n"))
    clock.now = 0.5
    view(OpOutput("R1", "a", "pull", b"none\n"))
    assert out.getvalue().count("\x1b[J") == 2
    assert screen(out.getvalue())[1] == "a  pull (1/3)      0.1s  RUNNING"  # output: no redraw


def test_live_view_stops_on_run_finished() -> None:
    clock, out = Clock(), io.StringIO()
    view = LiveView(out, hosts=["a", "b"], ops=OPS, clock=clock, height=24, width=80)
    run = run_of(["a", "b"])
    view(RunStarted(run, ops=OPS))
    view(OpStarted("R1", "a", "pull", T0))
    clock.now = 1.0
    ok = op_result("pull", OpStatus.SUCCESS, 0, 2)
    bad = op_result("pull", OpStatus.FAILED, 0, 3, exit_code=1)
    final = Run(
        "R1",
        "do-all",
        status=RunStatus.PARTIAL,
        hosts={
            "a": HostResult("a", HostStatus.COMPLETE, ops=(ok,)),
            "b": HostResult("b", HostStatus.FAILED, failed_op="pull", ops=(bad,)),
        },
    )
    view(RunFinished(final))
    drawn = out.getvalue()

    assert screen(drawn) == [
        "do-all  1 complete · 1 failed  00:01",
        "a  pull (1/3)      2.0s  COMPLETE",
        "b  pull (1/3)      3.0s  FAILED",
    ]
    clock.now = 10.0
    view.refresh()
    view(OpStarted("R1", "a", "switch", T0))
    view.stop()
    assert out.getvalue() == drawn


def test_live_view_waiting_slow_retry_and_controller() -> None:
    clock, out = Clock(), io.StringIO()
    view = LiveView(out, hosts=["a", "b"], ops=OPS, clock=clock, height=24, width=80)
    view(RunStarted(run_of(["a", "b"]), ops=OPS, controller_ops=("merge-pr",)))
    view(OpStarted("R1", None, "merge-pr", T0))
    clock.now = 2.0
    assert view.render()[1] == "controller  merge-pr (1/1)    2.0s  RUNNING"

    view(OpFinished("R1", None, op_result("merge-pr", OpStatus.SUCCESS, 0, 2)))
    view(OpStarted("R1", "a", "pull", T0))
    view(OpStarted("R1", "b", "pull", T0))
    clock.now = 3.0
    view(OpFinished("R1", "a", op_result("pull", OpStatus.SUCCESS, 2, 3)))
    view(OpStarted("R1", "b", "pull", T0, attempt=2))
    clock.now = 125.0
    view(OpSlow("R1", "b", "pull", 122.0))

    assert view.render() == [
        "do-all  2 running  02:05",
        "a           pull (1/3)        1.0s  WAITING",
        "b           pull (1/3) #2    2m02s  RUNNING slow",
    ]


# ---------------------------------------------------------------------------------------------
# PlainView


def small_run_events() -> list[Event]:
    pull = op_result("pull", OpStatus.SUCCESS, 0, 1.2)
    switch = op_result("switch", OpStatus.FAILED, 1.2, 4.2, exit_code=1, error="activation\nfailed")
    merged = op_result("merge-pr", OpStatus.SUCCESS, 0, 0.5)
    final = Run(
        "R1",
        "do-all",
        status=RunStatus.FAILED,
        started_at=T0,
        finished_at=at(5),
        hosts={"alpha": HostResult("alpha", HostStatus.FAILED, failed_op="switch")},
    )
    return [
        RunStarted(run_of(["alpha"]), ops=OPS, controller_ops=("merge-pr",)),
        OpStarted("R1", None, "merge-pr", T0),
        OpFinished("R1", None, merged),
        OpStarted("R1", "alpha", "pull", T0),
        OpFinished("R1", "alpha", pull),
        OpStarted("R1", "alpha", "switch", at(1.2)),
        OpOutput("R1", "alpha", "switch", b"building\n"),
        OpSlow("R1", "alpha", "switch", 65.0),
        OpNote("R1", "alpha", "switch", "retrying:\nconnection lost"),
        OpStarted("R1", "alpha", "switch", at(1.2), attempt=2),
        OpFinished("R1", "alpha", switch),
        HostFinished("R1", final.hosts["alpha"]),
        RunFinished(final),
    ]


def test_plain_view_lines() -> None:
    out = io.StringIO()
    feed(PlainView(out), small_run_events())

    assert out.getvalue().splitlines() == [
        "run R1 started: do-all on 1 hosts: pull, switch, test (controller: merge-pr)",
        "[controller] merge-pr: started",
        "[controller] merge-pr: SUCCESS (0.5s)",
        "[alpha] pull: started",
        "[alpha] pull: SUCCESS (1.2s)",
        "[alpha] switch: started",
        "[alpha] switch: slow, running for 1m05s",
        "[alpha] switch: retrying: connection lost",
        "[alpha] switch: started (attempt 2)",
        "[alpha] switch: FAILED exit 1 (3.0s): activation failed",
        "[alpha] excluded: FAILED at switch",
        "run R1 finished: FAILED in 5.0s (1 failed)",
    ]


def test_plain_view_host_done_and_run_end() -> None:
    out = io.StringIO()
    view = PlainView(out)
    view(HostFinished("R1", HostResult("beta", HostStatus.COMPLETE)))
    view(HostFinished("R1", HostResult("gamma", HostStatus.FAILED, rolled_back=True)))
    view(RunStarted(run_of(["a"], retry_of="R0")))

    assert out.getvalue().splitlines() == [
        "[beta] done: COMPLETE",
        "[gamma] excluded: FAILED (rolled back)",
        "run R1 started: do-all on 1 hosts (retry of R0)",
    ]


def test_plain_view_verbose_output_is_sanitized_and_line_buffered() -> None:
    out = io.StringIO()
    view = PlainView(out, verbose=True)
    chunks = [
        b"plain line\n\x1b[31mred\x1b[0m and \xff\xfe bytes\n",
        b"\x1b]0;evil title\x07title gone\x07\x08 bell\n",
        b"half a li",
        b"ne \xc3",  # a UTF-8 sequence split across chunks
        b"\xa9\r\n",
        b"10%\r50%\r100%\n",
        b"tab\tkept\x1b[2J\x1b[H cleared\n",
        b"\xe2\x80\xaereversed? no\n",
        b"no newline at the end",
    ]
    for chunk in chunks:
        view(OpOutput("R1", "alpha", "switch", chunk))
    view(OpOutput("R1", "beta", "switch", b"interleaved\n"))
    view(OpFinished("R1", "alpha", OpResult("switch", OpStatus.SUCCESS)))

    assert out.getvalue().splitlines() == [
        "[alpha] switch| plain line",
        "[alpha] switch| red and \ufffd\ufffd bytes",
        "[alpha] switch| title gone bell",
        "[alpha] switch| half a line é",
        "[alpha] switch| 100%",
        "[alpha] switch| tab\tkept cleared",
        "[alpha] switch| reversed? no",
        "[beta] switch| interleaved",
        "[alpha] switch| no newline at the end",
        "[alpha] switch: SUCCESS",
    ]


def test_plain_view_bounds_partial_lines() -> None:
    out = io.StringIO()
    view = PlainView(out, verbose=True)
    for _ in range(10):
        view(OpOutput("R1", "a", "build", "é".encode() * 1000))  # 2000 bytes, no newline
    view(OpOutput("R1", "a", "build", b"\n"))

    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert all(len(line.encode()) <= MAX_OUTPUT_LINE + len("[a] build| ") for line in lines)
    assert "".join(line.removeprefix("[a] build| ") for line in lines) == "é" * 10000


def test_plain_view_not_verbose_hides_output_and_flushes_at_run_end() -> None:
    out = io.StringIO()
    feed(PlainView(out), [OpOutput("R1", "a", "pull", b"hidden\n")])
    assert out.getvalue() == ""

    out = io.StringIO()
    view = PlainView(out, verbose=True)
    view(OpOutput("R1", None, "merge-pr", b"partial"))
    view(RunFinished(Run("R1", "do-all", status=RunStatus.COMPLETE)))
    assert out.getvalue().splitlines() == [
        "[controller] merge-pr| partial",
        "run R1 finished: COMPLETE",
    ]


def test_plain_view_colours_only_when_asked() -> None:
    out = io.StringIO()
    view = PlainView(out, color=True)
    view(OpFinished("R1", "a", op_result("pull", OpStatus.FAILED, 0, 1, exit_code=2)))
    assert out.getvalue() == "[a] pull: \x1b[1;31mFAILED\x1b[0m exit 2 (1.0s)\n"


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_color_needs_a_tty_and_no_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert color_enabled(FakeTty())
    assert not color_enabled(io.StringIO())
    assert color_enabled(io.StringIO(), True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not color_enabled(FakeTty())
    assert color_enabled(FakeTty(), True)


# ---------------------------------------------------------------------------------------------
# JsonProgress


def test_json_progress_one_object_per_event_without_output() -> None:
    out = io.StringIO()
    feed(JsonProgress(out), small_run_events())
    records = [json.loads(line) for line in out.getvalue().splitlines()]

    assert [r["event"] for r in records] == [
        "run_started",
        "op_started",
        "op_finished",
        "op_started",
        "op_finished",
        "op_started",
        "op_slow",
        "op_note",
        "op_started",
        "op_finished",
        "host_finished",
        "run_finished",
    ]
    assert records[1] == {
        "event": "op_started",
        "run_id": "R1",
        "host": None,
        "op": "merge-pr",
        "status": "RUNNING",
        "attempt": 1,
        "started_at": "2024-05-01T12:00:00Z",
    }
    assert records[9]["host"] == "alpha"
    assert records[9]["status"] == "FAILED"
    assert records[9]["exit_code"] == 1
    assert records[9]["duration"] == 3.0
    assert records[10] == {
        "event": "host_finished",
        "run_id": "R1",
        "host": "alpha",
        "status": "FAILED",
        "failed_op": "switch",
        "rolled_back": False,
    }
    assert records[-1]["status"] == "FAILED"
    assert records[-1]["hosts_failed"] == 1
    assert "building" not in out.getvalue()
    assert all('": ' not in line and '", "' not in line for line in out.getvalue().splitlines())


# ---------------------------------------------------------------------------------------------
# render_summary


def summary_run() -> Run:
    tail = "\n".join(f"line {i}" for i in range(30)) + "\n\x1b[31mlast\x1b[0m \udcff\n"
    ok = tuple(op_result(op, OpStatus.SUCCESS, i, i + 1) for i, op in enumerate(OPS))
    failed = (
        op_result("pull", OpStatus.SUCCESS, 0, 1),
        op_result("switch", OpStatus.FAILED, 1, 63, exit_code=4, error="boom", tail=tail),
        OpResult("test", OpStatus.CANCELLED),
    )
    return Run(
        "R1",
        "do-all",
        status=RunStatus.PARTIAL,
        started_at=T0,
        finished_at=at(64),
        controller_ops=(op_result("merge-pr", OpStatus.SUCCESS, 0, 1),),
        hosts={
            "alpha": HostResult("alpha", HostStatus.COMPLETE, ops=ok),
            "beta": HostResult("beta", HostStatus.FAILED, failed_op="switch", ops=failed),
            "gamma": HostResult("gamma", HostStatus.PENDING),
        },
    )


def test_summary_table_status_and_tail() -> None:
    text = render_summary(summary_run())

    assert text.splitlines() == [
        "HOST   STATUS    pull  switch  test    FAILED OP  DURATION",
        "alpha  COMPLETE  ok    ok      ok                     3.0s",
        "beta   FAILED    ok    FAIL    cancel  switch        1m03s",
        "gamma  PENDING   -     -       -",
        "",
        "controller: merge-pr ok",
        "",
        "beta: switch FAILED exit 4 (1m02s): boom",
        *[f"  | line {i}" for i in range(11, 30)],
        "  | last ",
        "",
        "run R1 (do-all): PARTIAL  1 complete, 1 failed, 1 pending of 3 hosts in 1m04s",
    ]
    assert TAIL_LINES == 20


def test_summary_prefers_read_tail() -> None:
    calls: list[tuple[str, str]] = []

    def read_tail(host: str, op: str) -> str:
        calls.append((host, op))
        return "".join(f"log {i}\r\n" for i in range(100))

    text = render_summary(summary_run(), read_tail=read_tail)

    assert calls == [("beta", "switch")]
    assert "  | log 79" not in text
    assert [line for line in text.splitlines() if line.startswith("  | ")] == [
        f"  | log {i}" for i in range(80, 100)
    ]


def test_summary_of_a_failed_controller_op_and_no_output() -> None:
    run = Run(
        "R2",
        "deploy",
        status=RunStatus.FAILED,
        controller_ops=(op_result("merge-pr", OpStatus.FAILED, 0, 1, exit_code=1),),
        hosts={"a": HostResult("a", HostStatus.FAILED)},
    )
    assert render_summary(run, read_tail=lambda host, op: f"{host} {op} said\n").splitlines()[
        5:7
    ] == [
        "controller: merge-pr FAILED exit 1 (1.0s)",
        "  | controller merge-pr said",
    ]
    assert render_summary(run).splitlines() == [
        "HOST  STATUS  FAILED OP  DURATION",
        "a     FAILED",
        "",
        "controller: merge-pr FAIL",
        "",
        "controller: merge-pr FAILED exit 1 (1.0s)",
        "  (no output)",
        "",
        "a: FAILED (no op failed; see the log)",
        "",
        "run R2 (deploy): FAILED  1 failed of 1 hosts",
    ]


# ---------------------------------------------------------------------------------------------
# Tables and text


def test_render_table_aligns_truncates_and_sanitizes() -> None:
    rows: list[list[str | Styled]] = [
        ["alpha", "10.0.0.1", "web,db", "3"],
        ["a-much-longer-name", "host\nwith\x1b[31m newline", Styled("x", "1"), "12"],
    ]
    assert render_table(["NAME", "ADDRESS", "TAGS", "N"], rows, right={3}).splitlines() == [
        "NAME                ADDRESS            TAGS     N",
        "alpha               10.0.0.1           web,db   3",
        "a-much-longer-name  host with newline  x       12",
    ]
    narrow = render_table(["NAME", "ADDRESS", "TAGS", "N"], rows, max_width=30)
    assert all(cell_width(line) <= 30 for line in narrow.splitlines())
    assert narrow.splitlines()[2] == "a-much-…  host wi…  x       12"
    assert render_table(["A", "B"], []) == "A  B"
    coloured = render_table(["A"], [[Styled("x", "32")]], color=True)
    assert coloured == "\x1b[1mA\x1b[0m\n\x1b[32mx\x1b[0m"


def test_text_helpers() -> None:
    assert sanitize("a\x1b[1;31mb\x1b[0m\x00c\td\x7f\x9be\u202eé\udcff") == "ab" + "c\tdé"
    assert one_line(" a\n\tb\r\n") == "a b"
    assert output_line(b"\xff ok\r") == "\ufffd ok"
    assert output_line("1\r2\r\r") == "2"
    assert truncate("abcdef", 4) == "abc…"
    assert truncate("abc", 3) == "abc"
    assert truncate("日本語", 4) == "日…"
    assert cell_width("日本") == 4
    assert format_duration(1.25) == "1.2s"
    assert format_duration(59.96) == "1m00s"
    assert format_duration(123) == "2m03s"
    assert format_duration(3 * 3600 + 65) == "3h01m"
    assert format_duration(None) == ""
    assert format_clock(133) == "02:13"
    assert format_clock(3723) == "1:02:03"
