"""Benchmark fleet against Ansible, pyinfra, a bare asyncssh floor and the ideal.

    .venv/bin/python bench/run.py --hosts 10,50,200

For each host count: start the hosts (real sshd servers up to --sshd-max, else the simulated
hosts of `fleet demo`), then for each workload (zero, timed) and each tool, push a new commit
and run the do-all workload (pull, switch, test) with the tool as a child process, measuring
its wall time, CPU and memory. Prints a table per host count and workload; unless --no-write,
merges the results into docs/benchmarks.json and rewrites the generated section of
docs/benchmarks.md and the plot docs/benchmarks.svg. See docs/benchmarks.md.

Ansible and pyinfra come from bench/.venv (`python3 -m venv bench/.venv &&
bench/.venv/bin/pip install -r bench/requirements.txt`); a tool that is not installed is
left out with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.hosts import HostSet, demo_hosts, sshd_hosts
from bench.report import Record
from bench.tools import PEER_BIN, TOOLS, Result, Tool
from bench.workload import make_workload

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOOLS = (
    "fleet-lockstep",
    "fleet-streaming",
    "floor-shell-lockstep",
    "floor-shell-streaming",
    "floor-sessions-lockstep",
    "floor-fleet-scripts-lockstep",
    "floor-fleet-scripts-streaming",
    "pyinfra",
    "ansible",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hosts", default="10,50,200", help="host counts (default: %(default)s)")
    p.add_argument(
        "--tools",
        default=",".join(DEFAULT_TOOLS),
        help=f"comma-separated, from: {', '.join(TOOLS)} (default: all but "
        "floor-sessions-streaming)",
    )
    p.add_argument("--workloads", default="zero,timed", help="zero, timed (default: both)")
    p.add_argument(
        "--sshd-max", type=int, default=100, help="real sshd hosts up to this many, else demo"
    )
    p.add_argument(
        "--peers-max",
        type=int,
        default=200,
        help="run ansible and pyinfra only up to this many hosts (default: %(default)s)",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="runs of fleet and the floors; the median is kept"
    )
    p.add_argument("--peer-repeat", type=int, default=1, help="runs of ansible and pyinfra")
    p.add_argument(
        "--pam",
        action="store_true",
        help="run the sshd hosts with UsePAM yes (a login session per SSH session, as on a "
        "stock host) instead of the harness's UsePAM no",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the timed durations")
    p.add_argument("--workdir", help="where the hosts live (default: a temporary directory)")
    p.add_argument("--out", default=str(REPO_ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--no-write", action="store_true", help="print the tables only")
    p.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite the generated section and the plot from the JSON",
    )
    return p.parse_args(argv)


def machine_info() -> dict[str, str]:
    def first(argv: list[str], pattern: str = r"(.+)") -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        except OSError:
            return "?"
        match = re.search(pattern, out.stdout + out.stderr)
        return match[1].strip() if match else "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    os_name = "?"
    with contextlib.suppress(OSError):
        match = re.search(r'PRETTY_NAME="(.+)"', Path("/etc/os-release").read_text())
        os_name = match[1] if match else "?"
    import asyncssh

    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "memory": mem,
        "OS": f"{os_name}, Linux {platform.release()}",
        "Python": platform.python_version(),
        "OpenSSH": first(["ssh", "-V"], r"(OpenSSH_\S+)"),
        "git": first(["git", "--version"], r"git version (\S+)"),
        "asyncssh": asyncssh.__version__,
        "ansible-core": first([str(PEER_BIN / "ansible"), "--version"], r"core ([\d.]+)"),
        "pyinfra": first([str(PEER_BIN / "pyinfra"), "--version"], r"([\d.]+)"),
    }


@contextlib.contextmanager
def host_set(workdir: Path, n: int, sshd_max: int, pam: bool) -> Iterator[HostSet]:
    workdir.mkdir(parents=True)
    if n <= sshd_max:
        with sshd_hosts(workdir, n, pam=pam) as hosts:
            yield hosts
    else:
        with demo_hosts(workdir, n) as hosts:
            yield hosts


def run_tool(tool: Tool, hosts: HostSet, rundir: Path) -> Result:
    commit = hosts.new_commit()
    rundir.mkdir(parents=True)
    result = tool.run(hosts, rundir)
    if result.ok:  # the tool says so; check that every host really pulled the commit
        behind = [name for name, head in hosts.heads().items() if head != commit]
        if behind:
            result.ok = False
            result.note = f"{len(behind)} hosts did not pull ({behind[0]}, ...)"
    return result


def bench_hosts(n: int, args: argparse.Namespace, tools: list[Tool], base: Path) -> list[Record]:
    records: list[Record] = []
    workdir = base / f"hosts-{n}"
    started = time.monotonic()
    with host_set(workdir, n, args.sshd_max, args.pam) as hosts:
        print(f"# {n} {hosts.kind} hosts ready in {time.monotonic() - started:.1f} s", flush=True)
        chosen = [t for t in tools if n <= args.peers_max or t.name.startswith(("fleet", "floor"))]
        for workload_name in args.workloads.split(","):
            workload = make_workload(workload_name, [h.name for h in hosts.hosts], args.seed)
            hosts.set_durations(workload.switch, workload.test)
            results: dict[str, list[Result]] = {t.name: [] for t in chosen}
            for r in range(max(args.repeat, args.peer_repeat)):
                for tool in chosen:
                    own = tool.name.startswith(("fleet", "floor"))
                    if r >= (args.repeat if own else args.peer_repeat):
                        continue
                    rundir = workdir / "runs" / f"{workload_name}-{tool.name}-{r}".replace(" ", "_")
                    result = run_tool(tool, hosts, rundir)
                    results[tool.name].append(result)
                    status = "ok" if result.ok else f"FAILED {result.note}"
                    print(
                        f"  {workload_name:5} {tool.name:25} {result.measurement.wall:7.2f} s "
                        f"{status}",
                        flush=True,
                    )
            block = [
                _record(n, hosts.kind, workload_name, res, workload.ideal(res[0].mode))
                for res in results.values()
            ]
            records += block
            print("\n" + report.text_table(n, workload_name, block) + "\n", flush=True)
    return records


def _record(n: int, kind: str, workload: str, results: list[Result], ideal: float) -> Record:
    ok = [r for r in results if r.ok]
    pool = ok or results
    median = sorted(pool, key=lambda r: r.measurement.wall)[(len(pool) - 1) // 2]
    m = median.measurement
    return Record(
        hosts=n,
        kind=kind,
        workload=workload,
        tool=median.tool,
        mode=median.mode,
        wall=statistics.median(r.measurement.wall for r in pool),
        cpu=m.cpu,
        rss_mb=m.rss_mb,
        tree_mb=m.tree_mb,
        ideal=ideal,
        ok=len(ok) == len(results),
        machine=m.machine,
        runs=len(results),
        walls=tuple(round(r.measurement.wall, 3) for r in results),
        note="; ".join(sorted({r.note for r in results if r.note}))[:300],
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        out = Path(args.out)
        data = report.load(out.with_suffix(".json"))
        out.with_suffix(".svg").write_text(report.svg_plot(data))
        report.write_markdown(out, report.markdown_section(data, out.with_suffix(".svg").name))
        return 0
    counts = [int(x) for x in args.hosts.split(",")]
    tools = []
    for name in args.tools.split(","):
        if name not in TOOLS:
            sys.exit(f"bench: unknown tool {name!r} (known: {', '.join(TOOLS)})")
        why_not = TOOLS[name].available()
        if why_not:
            print(f"# {name} left out: {why_not}", flush=True)
            continue
        tools.append(TOOLS[name])
    from fleet.transport.ssh import raise_nofile_limit

    raise_nofile_limit()
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    records: list[Record] = []
    try:
        for n in counts:
            block = bench_hosts(n, args, tools, base)
            records += block
            if not args.no_write:  # after each host count: a long run keeps what it measured
                write(Path(args.out), block, argv)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if all(r.ok for r in records) else 1


def write(out: Path, records: list[Record], argv: Sequence[str] | None) -> None:
    words = list(sys.argv[1:] if argv is None else argv)
    command = ".venv/bin/python bench/run.py " + shlex.join(words)
    data_path = out.with_suffix(".json")
    data = report.merge(report.load(data_path), records, command.strip(), machine_info())
    data_path.write_text(json.dumps(data, indent=1) + "\n")
    plot = out.with_suffix(".svg")
    plot.write_text(report.svg_plot(data))
    report.write_markdown(out, report.markdown_section(data, plot.name))
    print(f"# wrote {out}, {data_path.name} and {plot.name}")


if __name__ == "__main__":
    sys.exit(main())
