"""Results: the records, the text table, the Markdown section and the SVG plot."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# the floor each tool is compared with: the same session strategy and mode
FLOOR_OF = {
    "fleet lockstep": "floor shell lockstep",
    "fleet streaming": "floor shell streaming",
    "ansible (linear)": "floor sessions lockstep",
    "pyinfra": "floor sessions lockstep",
}
# the floor that sends the very commands fleet sends: what is left is the controller's own cost
SCRIPTS_FLOOR_OF = {
    "fleet lockstep": "floor fleet-scripts lockstep",
    "fleet streaming": "floor fleet-scripts streaming",
}
TOOL_ORDER = (
    "fleet lockstep",
    "fleet streaming",
    "floor shell lockstep",
    "floor shell streaming",
    "floor sessions lockstep",
    "floor sessions streaming",
    "floor fleet-scripts lockstep",
    "floor fleet-scripts streaming",
    "pyinfra",
    "ansible (linear)",
)


@dataclass(frozen=True)
class Record:
    hosts: int
    kind: str  # sshd | demo
    workload: str  # zero | timed
    tool: str
    mode: str
    wall: float
    cpu: float
    rss_mb: float
    tree_mb: float
    ideal: float
    ok: bool
    machine: float = 0.0  # CPU seconds of the whole machine (controller and hosts) meanwhile
    runs: int = 1
    walls: tuple[float, ...] = ()
    note: str = ""

    @property
    def cpu_ms_per_host_op(self) -> float:
        return 1000 * self.cpu / (self.hosts * 3)

    @property
    def key(self) -> tuple[int, str, str, str]:
        return (self.hosts, self.kind, self.workload, self.tool)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        data = {**data, "walls": tuple(data.get("walls", ()))}
        return cls(**data)


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"records": [], "commands": [], "machine": {}}


def merge(old: dict[str, Any], new: Sequence[Record], command: str, machine: dict[str, str]) -> \
        dict[str, Any]:  # fmt: skip
    records = {Record.from_json(r).key: Record.from_json(r) for r in old.get("records", [])}
    for r in new:
        records[r.key] = r
    commands = [c for c in old.get("commands", []) if c != command] + [command]
    ordered = sorted(records.values(), key=_sort_key)
    return {"machine": machine, "commands": commands, "records": [asdict(r) for r in ordered]}


def _sort_key(r: Record) -> tuple[int, int, int, int]:
    order = TOOL_ORDER.index(r.tool) if r.tool in TOOL_ORDER else len(TOOL_ORDER)
    return (int(r.kind == "sshd+pam"), r.hosts, 0 if r.workload == "zero" else 1, order)


def groups(records: Iterable[Record]) -> dict[tuple[int, str, str], list[Record]]:
    out: dict[tuple[int, str, str], list[Record]] = {}
    for r in sorted(records, key=_sort_key):
        out.setdefault((r.hosts, r.kind, r.workload), []).append(r)
    return out


# ---------------------------------------------------------------------------------------------
# Tables


TIMES = "\u00d7"  # the multiplication sign
COLUMNS: tuple[str, ...] = (
    "tool",
    "wall s",
    f"{TIMES} ideal",
    f"{TIMES} floor",
    f"{TIMES} same-scripts floor",
    "CPU s",
    "CPU ms/host/op",
    "machine CPU s",
    "RSS MB",
    "tree MB",
)


def _row(r: Record, by_tool: dict[str, Record]) -> list[str]:
    floor = by_tool.get(FLOOR_OF.get(r.tool, ""))
    vs_floor = f"{r.wall / floor.wall:.2f}" if floor and floor.ok and floor.wall else "—"
    same = by_tool.get(SCRIPTS_FLOOR_OF.get(r.tool, ""))
    vs_same = f"{r.wall / same.wall:.2f}" if same and same.ok and same.wall else "—"
    vs_ideal = f"{r.wall / r.ideal:.2f}" if r.ideal else "—"
    spread = f" ±{(max(r.walls) - min(r.walls)) / 2:.2f}" if len(r.walls) > 1 else ""
    wall = f"{r.wall:.2f}{spread}" if r.ok else f"FAILED: {r.note[:60]}"
    return [
        r.tool,
        wall,
        vs_ideal,
        vs_floor,
        vs_same,
        f"{r.cpu:.2f}",
        f"{r.cpu_ms_per_host_op:.1f}",
        f"{r.machine:.1f}" if r.machine else "—",
        f"{r.rss_mb:.0f}",
        f"{r.tree_mb:.0f}",
    ]


def title(hosts: int, workload: str, records: Sequence[Record]) -> str:
    where = {
        "sshd": "real sshd hosts",
        "sshd+pam": "real sshd hosts with UsePAM yes",
        "demo": "simulated hosts (fleet demo server)",
    }.get(records[0].kind, records[0].kind)
    if workload == "zero":
        return f"{hosts} {where}, zero-duration workload (pure overhead)"
    ideals = {r.mode: r.ideal for r in records}
    lock, stream = ideals.get("lockstep", 0.0), ideals.get("streaming", 0.0)
    return (
        f"{hosts} {where}, timed workload (ideal: lockstep {lock:.2f} s, streaming {stream:.2f} s)"
    )


def headline(records: Sequence[Record]) -> list[str]:
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
        floor = by_tool.get(FLOOR_OF[name])
        if floor and floor.ok:
            parts.append(f"{100 * (fleet.wall / floor.wall - 1):+.0f}% vs {floor.tool}")
        same = by_tool.get(SCRIPTS_FLOOR_OF[name])
        if same and same.ok:
            parts.append(f"{100 * (fleet.wall / same.wall - 1):+.0f}% vs {same.tool}")
        if fleet.ideal:
            over = fleet.wall - fleet.ideal
            parts.append(f"ideal + {over:.2f} s ({100 * over / fleet.ideal:.0f}%)")
        if parts:
            lines.append(f"{name}: " + ", ".join(parts))
    return lines


def text_table(hosts: int, workload: str, records: Sequence[Record]) -> str:
    by_tool = {r.tool: r for r in records}
    rows = [list(COLUMNS)] + [_row(r, by_tool) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [title(hosts, workload, records)]
    for k, row in enumerate(rows):
        rest = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in rest]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += headline(records)
    return "\n".join(lines)


def markdown_table(hosts: int, workload: str, records: Sequence[Record]) -> str:
    by_tool = {r.tool: r for r in records}
    lines = [f"#### {title(hosts, workload, records)}", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|")
    for r in records:
        cells = _row(r, by_tool)
        if r.tool.startswith("fleet"):
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    heads = headline(records)
    if heads:
        lines += [""] + [f"- {h}" for h in heads]
    return "\n".join(lines) + "\n"


def markdown_section(data: dict[str, Any], plot_name: str) -> str:
    records = [Record.from_json(r) for r in data["records"]]
    machine = data.get("machine", {})
    lines = ["### The machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "### The commands that produced these numbers", "", "```sh"]
    lines += data.get("commands", [])
    lines += ["```", "", f"![wall time against hosts]({plot_name})", "", "### Results", ""]
    for (hosts, _kind, workload), recs in groups(records).items():
        lines.append(markdown_table(hosts, workload, recs))
    return "\n".join(lines)


BEGIN, END = "<!-- bench:begin (written by bench/run.py) -->", "<!-- bench:end -->"


def write_markdown(path: Path, section: str) -> None:
    """Replace the generated section of `path` (between the markers); keep the rest."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{section}\n{END}{tail}")


# ---------------------------------------------------------------------------------------------
# The plot (SVG, written by hand: no plotting library needed)


COLORS = {
    "fleet lockstep": "#1f77b4",
    "fleet streaming": "#17becf",
    "floor shell lockstep": "#2ca02c",
    "floor shell streaming": "#98df8a",
    "floor sessions lockstep": "#8c564b",
    "floor sessions streaming": "#c49c94",
    "floor fleet-scripts lockstep": "#9467bd",
    "floor fleet-scripts streaming": "#c5b0d5",
    "pyinfra": "#ff7f0e",
    "ansible (linear)": "#d62728",
    "ideal lockstep": "#000000",
    "ideal streaming": "#7f7f7f",
}


def _series(records: Sequence[Record], workload: str) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for r in sorted(records, key=_sort_key):
        if r.workload != workload or not r.ok or r.kind == "sshd+pam":
            continue
        series.setdefault(r.tool, []).append((r.hosts, r.wall))
        if workload == "timed" and r.tool in ("fleet lockstep", "fleet streaming"):
            series.setdefault(f"ideal {r.mode}", []).append((r.hosts, r.ideal))
    return series


def svg_plot(data: dict[str, Any]) -> str:
    records = [Record.from_json(r) for r in data["records"]]
    panels = [("zero", "zero-duration workload"), ("timed", "timed workload")]
    width, height, pw, ph, left, top = 1100, 500, 430, 340, 70, 50
    records = [r for r in records if r.kind != "sshd+pam"]
    hosts = sorted({r.hosts for r in records}) or [1, 10]
    walls = [r.wall for r in records if r.ok] + [r.ideal for r in records if r.ideal]
    x0, x1 = math.log10(min(hosts) / 1.3), math.log10(max(hosts) * 1.3)
    y0, y1 = (
        math.log10(max(min(walls, default=0.5), 0.05) / 1.5),
        math.log10(max(walls, default=10) * 1.5),
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    legend: dict[str, str] = {}
    for p, (workload, label) in enumerate(panels):
        ox = left + p * (pw + 90)

        def px(h: float, ox: float = ox) -> float:
            return ox + (math.log10(h) - x0) / (x1 - x0) * pw

        def py(s: float) -> float:
            return top + ph - (math.log10(max(s, 1e-3)) - y0) / (y1 - y0) * ph

        out.append(
            f'<rect x="{ox}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>'
        )
        out.append(
            f'<text x="{ox + pw / 2}" y="{top - 12}" text-anchor="middle" font-size="14">'
            f"{html.escape(label)}</text>"
        )
        for h in hosts:
            x = px(h)
            out.append(f'<line x1="{x}" x2="{x}" y1="{top}" y2="{top + ph}" stroke="#eee"/>')
            out.append(f'<text x="{px(h)}" y="{top + ph + 16}" text-anchor="middle">{h}</text>')
        for s in _ticks(10**y0, 10**y1):
            out.append(f'<line x1="{ox}" x2="{ox + pw}" y1="{py(s)}" y2="{py(s)}" stroke="#eee"/>')
            out.append(f'<text x="{ox - 6}" y="{py(s) + 4}" text-anchor="end">{s:g}</text>')
        out.append(
            f'<text x="{ox + pw / 2}" y="{top + ph + 34}" text-anchor="middle">hosts (log)</text>'
        )
        out.append(
            f'<text x="{ox - 48}" y="{top + ph / 2}" text-anchor="middle" '
            f'transform="rotate(-90 {ox - 48} {top + ph / 2})">wall time, s (log)</text>'
        )
        for tool, points in _series(records, workload).items():
            color = COLORS.get(tool, "#333")
            dash = ' stroke-dasharray="6 4"' if tool.startswith(("ideal", "floor")) else ""
            path = " ".join(f"{px(h):.1f},{py(s):.1f}" for h, s in points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
            )
            for h, s in points:
                out.append(f'<circle cx="{px(h):.1f}" cy="{py(s):.1f}" r="3" fill="{color}"/>')
            legend[tool] = color
    ly = top + ph + 56
    names = [t for t in (*TOOL_ORDER, "ideal lockstep", "ideal streaming") if t in legend]
    for i, name in enumerate(names):
        lx = left + (i % 5) * 200
        y = ly + (i // 5) * 18
        dash = ' stroke-dasharray="6 4"' if name.startswith(("ideal", "floor")) else ""
        out.append(
            f'<line x1="{lx}" x2="{lx + 24}" y1="{y}" y2="{y}" stroke="{legend[name]}" '
            f'stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{lx + 30}" y="{y + 4}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _ticks(low: float, high: float) -> list[float]:
    ticks = []
    exp = math.floor(math.log10(low))
    while 10**exp <= high:
        for m in (1, 2, 5):
            v = m * 10**exp
            if low <= v <= high:
                ticks.append(round(v, 6))
        exp += 1
    return ticks
