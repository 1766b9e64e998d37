"""bench/rtt.py's results: the records, a table per RTT, the plot of wall against RTT."""

from __future__ import annotations

import html
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.report import COLORS, TIMES, TOOL_ORDER
from bench.tools import Result

# the one-shell floor of each tool's mode: the limit of fleet's design (one shell per host)
SHELL_FLOOR = {"lockstep": "floor shell lockstep", "streaming": "floor shell streaming"}
BEGIN = "<!-- bench-rtt:begin (written by bench/rtt.py) -->"
END = "<!-- bench-rtt:end -->"


@dataclass(frozen=True)
class RttRecord:
    hosts: int
    rtt_ms: float
    workload: str  # zero | timed
    tool: str
    mode: str
    wall: float  # the median of the runs
    walls: tuple[float, ...]
    hosts_ideal: float  # the hosts' own time (bench/workload.py)
    round_trips_ideal: int  # per host: set-up and one per op
    round_trips: float  # per host, the median run's (connections + turns, bench/proxy.py)
    connections: float  # per host
    cpu: float  # the controller's, the median run's
    machine: float  # CPU seconds of the whole machine meanwhile
    ok: bool
    note: str = ""

    @property
    def ideal(self) -> float:
        return self.hosts_ideal + self.round_trips_ideal * self.rtt_ms / 1000

    @property
    def key(self) -> tuple[int, float, str, str]:
        return (self.hosts, self.rtt_ms, self.workload, self.tool)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RttRecord:
        return cls(**{**data, "walls": tuple(data["walls"])})


def per_host(counts: Mapping[str, Mapping[str, int]]) -> tuple[float, float]:
    """Mean round trips (connections + turns) and connections per host."""
    if not counts:
        return 0.0, 0.0
    trips = [c["connections"] + c["turns"] for c in counts.values()]
    conns = [c["connections"] for c in counts.values()]
    return statistics.fmean(trips), statistics.fmean(conns)


def record(
    hosts: int,
    rtt_ms: float,
    workload: str,
    runs: Sequence[tuple[Result, Mapping[str, Mapping[str, int]]]],
    *,
    hosts_ideal: float,
    round_trips_ideal: int,
) -> RttRecord:
    ok = [run for run in runs if run[0].ok]
    pool = ok or list(runs)
    result, counts = sorted(pool, key=lambda run: run[0].measurement.wall)[(len(pool) - 1) // 2]
    trips, conns = per_host(counts)
    return RttRecord(
        hosts=hosts,
        rtt_ms=rtt_ms,
        workload=workload,
        tool=result.tool,
        mode=result.mode,
        wall=result.measurement.wall,
        walls=tuple(round(r.measurement.wall, 3) for r, _ in runs),
        hosts_ideal=hosts_ideal,
        round_trips_ideal=round_trips_ideal,
        round_trips=round(trips, 2),
        connections=round(conns, 2),
        cpu=round(result.measurement.cpu, 3),
        machine=round(result.measurement.machine, 2),
        ok=len(ok) == len(runs),
        note="; ".join(sorted({r.note for r, _ in runs if r.note}))[:300],
    )


# ---------------------------------------------------------------------------------------------
# The JSON


def data_path(markdown: Path) -> Path:
    return markdown.with_name(markdown.stem + "-rtt.json")


def plot_path(markdown: Path) -> Path:
    return markdown.with_name(markdown.stem + "-rtt.svg")


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"records": [], "commands": [], "machine": {}}


def merge(
    old: Mapping[str, Any], new: Iterable[RttRecord], command: str, machine: Mapping[str, str]
) -> dict[str, Any]:
    records = {RttRecord.from_json(r).key: RttRecord.from_json(r) for r in old.get("records", [])}
    records.update({r.key: r for r in new})
    commands = [c for c in old.get("commands", []) if c != command] + [command]
    ordered = sorted(records.values(), key=_sort_key)
    return {"machine": dict(machine), "commands": commands, "records": [asdict(r) for r in ordered]}


def save(markdown: Path, data: Mapping[str, Any]) -> None:
    data_path(markdown).write_text(json.dumps(data, indent=1) + "\n")


def _sort_key(r: RttRecord) -> tuple[float, int, int, int]:
    order = TOOL_ORDER.index(r.tool) if r.tool in TOOL_ORDER else len(TOOL_ORDER)
    return (r.rtt_ms, r.hosts, 0 if r.workload == "zero" else 1, order)


# ---------------------------------------------------------------------------------------------
# Tables


COLUMNS = (
    "tool",
    "wall s",
    f"{TIMES} ideal",
    f"{TIMES} one-shell floor",
    "round trips/host",
    "connections/host",
    "CPU s",
    "machine CPU s",
)


def _cells(r: RttRecord, by_tool: Mapping[str, RttRecord]) -> list[str]:
    floor = by_tool.get(SHELL_FLOOR.get(r.mode, ""))
    vs_floor = f"{r.wall / floor.wall:.2f}" if floor and floor.ok and floor.wall else "—"
    spread = f" ±{(max(r.walls) - min(r.walls)) / 2:.2f}" if len(r.walls) > 1 else ""
    wall = f"{r.wall:.2f}{spread}" if r.ok else f"FAILED: {r.note[:60]}"
    return [
        r.tool,
        wall,
        f"{r.wall / r.ideal:.2f}" if r.ideal else "—",
        vs_floor,
        f"{r.round_trips:.1f}",
        f"{r.connections:.1f}",
        f"{r.cpu:.2f}",
        f"{r.machine:.1f}",
    ]


def title(records: Sequence[RttRecord]) -> str:
    r = records[0]
    what = "zero workload" if r.workload == "zero" else "timed workload"
    ideals = sorted({(x.mode, x.ideal, x.round_trips_ideal) for x in records})
    ideal = ", ".join(f"{mode} {value:.2f} s" for mode, value, _ in ideals)
    return (
        f"RTT {r.rtt_ms:g} ms, {r.hosts} sshd hosts, {what} (ideal: {ideal}; "
        f"{r.round_trips_ideal} round trips/host)"
    )


def groups(records: Iterable[RttRecord]) -> dict[tuple[float, int, str], list[RttRecord]]:
    out: dict[tuple[float, int, str], list[RttRecord]] = {}
    for r in sorted(records, key=_sort_key):
        out.setdefault((r.rtt_ms, r.hosts, r.workload), []).append(r)
    return out


def headline(records: Sequence[RttRecord]) -> list[str]:
    by_tool = {r.tool: r for r in records}
    lines = []
    for name in ("fleet lockstep", "fleet streaming"):
        fleet = by_tool.get(name)
        if fleet is None or not fleet.ok:
            continue
        parts = []
        for peer in ("ansible (linear)", "pyinfra"):
            other = by_tool.get(peer)
            if other and other.ok:
                parts.append(f"{other.wall / fleet.wall:.1f}{TIMES} faster than {peer.split()[0]}")
        floor = by_tool.get(SHELL_FLOOR[fleet.mode])
        if floor and floor.ok:
            parts.append(f"{100 * (fleet.wall / floor.wall - 1):+.0f}% vs {floor.tool}")
        if parts:
            lines.append(f"{name}: " + ", ".join(parts))
    return lines


def text_table(records: Sequence[RttRecord]) -> str:
    by_tool = {r.tool: r for r in records}
    rows = [list(COLUMNS)] + [_cells(r, by_tool) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [title(records)]
    for k, row in enumerate(rows):
        rest = zip(row[1:], widths[1:], strict=True)
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in rest]))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + headline(records))


def markdown_section(data: Mapping[str, Any], plot_name: str) -> str:
    records = [RttRecord.from_json(r) for r in data["records"]]
    lines = ["#### The commands that produced these numbers", "", "```sh"]
    lines += data.get("commands", [])
    lines += ["```", "", f"![wall time against RTT]({plot_name})", ""]
    current = None
    for (rtt, _hosts, _workload), recs in groups(records).items():
        if rtt != current:
            lines += [f"#### RTT {rtt:g} ms", ""]
            current = rtt
        by_tool = {r.tool: r for r in recs}
        lines += [f"##### {title(recs)}", ""]
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|")
        for r in recs:
            cells = _cells(r, by_tool)
            if r.tool.startswith("fleet"):
                cells[0] = f"**{cells[0]}**"
            lines.append("| " + " | ".join(cells) + " |")
        heads = headline(recs)
        lines += ([""] + [f"- {h}" for h in heads] if heads else []) + [""]
    return "\n".join(lines)


def write(markdown: Path, data: Mapping[str, Any]) -> None:
    """Rewrite the plot and the RTT section of `markdown` (between its markers)."""
    plot = plot_path(markdown)
    plot.write_text(svg_plot(data))
    section = markdown_section(data, plot.name)
    text = markdown.read_text() if markdown.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    markdown.write_text(f"{head}{BEGIN}\n{section}\n{END}{tail}")


# ---------------------------------------------------------------------------------------------
# The plot: wall against RTT, one panel per host count and workload (SVG, by hand)


def svg_plot(data: Mapping[str, Any]) -> str:
    records = [RttRecord.from_json(r) for r in data["records"]]
    panels = sorted({(r.hosts, r.workload) for r in records}, key=lambda p: (p[1] != "zero", p[0]))
    pw, ph, left, top, gap = 330, 300, 60, 40, 70
    width = left + len(panels) * (pw + gap)
    height = top + ph + 110
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    legend: dict[str, str] = {}
    for p, (hosts, workload) in enumerate(panels):
        mine = [r for r in records if (r.hosts, r.workload) == (hosts, workload) and r.ok]
        ox = left + p * (pw + gap)
        x1 = max([r.rtt_ms for r in mine] + [1.0]) * 1.05
        y1 = max([r.wall for r in mine] + [r.ideal for r in mine] + [1.0]) * 1.08

        def px(ms: float, ox: float = ox, x1: float = x1) -> float:
            return ox + ms / x1 * pw

        def py(s: float, y1: float = y1) -> float:
            return top + ph - s / y1 * ph

        out.append(
            f'<rect x="{ox}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>'
        )
        label = f"{hosts} hosts, {workload} workload"
        out.append(
            f'<text x="{ox + pw / 2}" y="{top - 12}" text-anchor="middle" font-size="14">'
            f"{html.escape(label)}</text>"
        )
        for ms in sorted({r.rtt_ms for r in mine}):
            out.append(f'<text x="{px(ms)}" y="{top + ph + 16}" text-anchor="middle">{ms:g}</text>')
        for s in _linear_ticks(y1):
            out.append(f'<line x1="{ox}" x2="{ox + pw}" y1="{py(s)}" y2="{py(s)}" stroke="#eee"/>')
            out.append(f'<text x="{ox - 6}" y="{py(s) + 4}" text-anchor="end">{s:g}</text>')
        out.append(
            f'<text x="{ox + pw / 2}" y="{top + ph + 34}" text-anchor="middle">RTT, ms</text>'
        )
        out.append(
            f'<text x="{ox - 40}" y="{top + ph / 2}" text-anchor="middle" '
            f'transform="rotate(-90 {ox - 40} {top + ph / 2})">wall time, s</text>'
        )
        series: dict[str, list[tuple[float, float]]] = {}
        for r in sorted(mine, key=lambda r: r.rtt_ms):
            series.setdefault(r.tool, []).append((r.rtt_ms, r.wall))
            if r.tool in SHELL_FLOOR.values():
                series.setdefault(f"ideal {r.mode}", []).append((r.rtt_ms, r.ideal))
        for tool, points in series.items():
            color = COLORS.get(tool, "#333")
            dash = ' stroke-dasharray="6 4"' if tool.startswith(("ideal", "floor")) else ""
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(set(points)))
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
            )
            for x, y in points:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
            legend[tool] = color
    names = [t for t in (*TOOL_ORDER, "ideal lockstep", "ideal streaming") if t in legend]
    for i, name in enumerate(names):
        lx = left + (i % 5) * 200
        y = top + ph + 56 + (i // 5) * 18
        dash = ' stroke-dasharray="6 4"' if name.startswith(("ideal", "floor")) else ""
        out.append(
            f'<line x1="{lx}" x2="{lx + 24}" y1="{y}" y2="{y}" stroke="{legend[name]}" '
            f'stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{lx + 30}" y="{y + 4}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _linear_ticks(high: float) -> list[float]:
    """0 and a round step up to `high`, at most 8 of them."""
    step = next(s for s in (0.5, 1, 2, 5, 10, 20, 50, 100, 200) if high / s <= 8)
    return [k * step for k in range(int(high / step) + 1)]
