"""bench/rtt_report.py: the ideal at an RTT, a table per RTT, and a plot that is SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from bench import rtt_report
from bench.measure import Measurement
from bench.rtt_report import RttRecord
from bench.tools import Result


def _run(tool: str, wall: float, turns: int) -> tuple[Result, dict[str, dict[str, int]]]:
    m = Measurement(wall=wall, cpu=0.5, rss_mb=40, tree_mb=30, returncode=0, machine=1.0)
    counts = {h: {"connections": 1, "turns": turns} for h in ("a", "b")}
    return Result(tool, "lockstep", m, True), counts


def _records() -> list[RttRecord]:
    out = []
    for rtt in (0.0, 80.0):
        for tool, wall, turns in (("fleet lockstep", 3.0, 13), ("floor shell lockstep", 2.5, 11)):
            runs = [_run(tool, wall + d, turns) for d in (0.2, 0.0, 0.1)]
            out.append(
                rtt_report.record(20, rtt, "zero", runs, hosts_ideal=1.0, round_trips_ideal=8)
            )
    return out


def test_a_record_keeps_the_median_run_and_its_round_trips() -> None:
    r = _records()[0]
    assert (r.wall, r.walls, r.round_trips, r.connections) == (3.1, (3.2, 3.0, 3.1), 14, 1)
    assert r.ideal == 1.0
    assert _records()[2].ideal == 1.0 + 8 * 0.080


def test_the_section_has_a_table_per_rtt_and_the_plot_is_svg(tmp_path: Path) -> None:
    markdown = tmp_path / "benchmarks.md"
    markdown.write_text(f"# B\n\nbefore\n\n{rtt_report.BEGIN}\nold\n{rtt_report.END}\nafter\n")
    data = rtt_report.merge(rtt_report.load(tmp_path / "none.json"), _records(), "cmd", {})
    rtt_report.write(markdown, data)
    text = markdown.read_text()
    assert text.startswith("# B\n\nbefore") and text.endswith("after\n") and "old" not in text
    assert "#### RTT 0 ms" in text and "#### RTT 80 ms" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| **fleet lockstep** | 3.10 ±0.10"))
    assert "| 1.19 |" in row and "| 14.0 | 1.0 |" in row  # the one-shell floor: 3.1 / 2.6
    root = ET.fromstring(rtt_report.plot_path(markdown).read_text())
    assert root.tag.endswith("svg")
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 3  # 2 tools + ideal
