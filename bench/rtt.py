"""Benchmark do-all where fleets live: every host behind a delay proxy, at several RTTs.

    .venv/bin/python bench/rtt.py --hosts 20,50 --rtt 0,20,80,200 --repeat 3
    .venv/bin/python bench/rtt.py --inventory        # round trips per op, fleet and the floors

For each host count: start real sshd hosts (as bench/run.py does), put each behind its own
listener of bench/proxy.py (known_hosts keyed by the proxy's [address]:port, so host keys stay
checked; fleet.toml, Ansible's inventory, pyinfra's and the floor's point there), then for
each RTT, workload (zero, timed) and run, every tool in turn does do-all while the proxy counts
each host's round trips (see bench/proxy.py). The ideal at RTT r is the hosts' own time (as in
bench/workload.py) plus the round trips no controller can avoid, times r: SETUP_ROUND_TRIPS to
get a command running on a new connection, and one per op. Unless --no-write, merges the
results into docs/benchmarks-rtt.json and rewrites the RTT section of docs/benchmarks.md and
the plot docs/benchmarks-rtt.svg.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import rtt_report
from bench.hosts import HostSet, sshd_hosts
from bench.rtt_report import RttRecord
from bench.run import machine_info, run_tool
from bench.tools import FLEET_PYTHON, TOOLS, Result, Tool
from bench.workload import make_workload
from tests.integration.harness.toml import TomlValue, toml_key, toml_table

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
OPS = 3  # pull, switch, test
# The round trips before a first command's output on a new connection, when nothing that can
# be sent without waiting waits: the TCP handshake; the SSH greeting with KEXINIT; the key
# exchange (KEXDH_INIT, its reply and NEWKEYS); the authentication (the service request and a
# signed publickey request sent together); the session channel's open (the command and its
# input follow the confirmation without waiting). RFC 4253 and 4252 allow each of these.
SETUP_ROUND_TRIPS = 5
DEFAULT_TOOLS = (
    "fleet-lockstep",
    "fleet-streaming",
    "floor-shell-lockstep",
    "floor-shell-streaming",
    "floor-sessions-lockstep",
    "pyinfra",
    "ansible",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/rtt.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hosts", default="20,50", help="host counts (default: %(default)s)")
    p.add_argument("--rtt", default="0,20,80,200", help="RTTs in ms (default: %(default)s)")
    p.add_argument(
        "--rtt-for",
        action="append",
        default=[],
        metavar="HOSTS:RTTS",
        help="other RTTs for one host count, e.g. 50:0,80 (repeatable)",
    )
    p.add_argument("--tools", default=",".join(DEFAULT_TOOLS), help=f"from: {', '.join(TOOLS)}")
    p.add_argument("--workloads", default="zero,timed", help="zero, timed (default: both)")
    p.add_argument("--repeat", type=int, default=3, help="runs of every tool (default: 3)")
    p.add_argument("--peer-repeat", type=int, help="runs of the peers (default: --repeat)")
    p.add_argument("--seed", type=int, default=1, help="seed of the timed durations")
    p.add_argument("--workdir", help="where the hosts live (default: a temporary directory)")
    p.add_argument("--out", default=str(REPO_ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--no-write", action="store_true", help="print the tables only")
    p.add_argument("--render", action="store_true", help="measure nothing: rewrite from the JSON")
    p.add_argument(
        "--inventory",
        action="store_true",
        help="count round trips per op instead: fleet's single ops and do-all, and the floors",
    )
    p.add_argument("--inventory-rtt", type=float, default=50, help="RTT of --inventory (ms)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# The proxy process and the hosts behind it


class ProxyProcess:
    """bench/proxy.py in a process of its own (its CPU is not the measured tool's)."""

    def __init__(self, hosts: HostSet) -> None:
        spec = hosts.workdir / "proxy.json"
        upstreams = [{"name": h.name, "address": h.address, "port": h.port} for h in hosts.hosts]
        spec.write_text(json.dumps({"hosts": upstreams}))
        self.proc = subprocess.Popen(
            [FLEET_PYTHON, str(BENCH_DIR / "proxy.py"), str(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.listeners: dict[str, tuple[str, int]] = {
            name: (address, port) for name, (address, port) in self._line().items()
        }

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("bench/proxy.py exited")
        data: dict[str, Any] = json.loads(line)
        return data

    def ask(self, command: str) -> dict[str, Any]:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()
        return self._line()

    def set_rtt(self, ms: float) -> None:
        self.ask(f"rtt {ms}")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def proxied(hosts: HostSet, listeners: Mapping[str, tuple[str, int]]) -> HostSet:
    """The same hosts, reached through their listeners: known_hosts keyed by each listener's
    [address]:port (the host's own key, so checking stays strict) and a fleet.toml to match."""
    out = hosts.workdir / "proxied"
    out.mkdir(exist_ok=True)
    lines = hosts.known_hosts.read_text().splitlines()
    known: list[str] = []
    for h in hosts.hosts:
        ours = [ln for ln in lines if ln.split(" ", 1)[0] == f"[{h.address}]:{h.port}"]
        assert ours, f"no known_hosts line for {h.name}"
        address, port = listeners[h.name]
        known += [f"[{address}]:{port} " + ln.split(" ", 1)[1] for ln in ours]
    known_hosts = out / "known_hosts"
    known_hosts.write_text("\n".join(known) + "\n")
    config = tomllib.loads(hosts.fleet_config.read_text())
    config["ssh"]["known_hosts"] = [str(known_hosts)]
    for name, (address, port) in listeners.items():
        config["hosts"][name].update(address=address, port=port)
    fleet_config = out / "fleet.toml"
    fleet_config.write_text(_toml(config))
    moved = [dataclasses.replace(h, address=listeners[h.name][0], port=listeners[h.name][1])
             for h in hosts.hosts]  # fmt: skip
    return dataclasses.replace(
        hosts, hosts=moved, known_hosts=known_hosts, fleet_config=fleet_config
    )


def _toml(config: Mapping[str, Any]) -> str:
    """Tables of scalars and tables of such tables (what fleet.toml here holds)."""
    out = []
    for name, values in config.items():
        scalars: dict[str, TomlValue | None] = {}
        for key, value in values.items():
            if isinstance(value, dict) and all(not isinstance(v, dict) for v in value.values()):
                out.append(toml_table(f"{toml_key(name)}.{toml_key(key)}", value))
            else:
                scalars[key] = value
        if scalars or not out:
            out.insert(0, toml_table(toml_key(name), scalars))
    return "\n".join(out)


@contextlib.contextmanager
def behind_proxy(workdir: Path, n: int) -> Iterator[tuple[HostSet, ProxyProcess]]:
    with sshd_hosts(workdir, n) as direct:
        proxy = ProxyProcess(direct)
        try:
            yield proxied(direct, proxy.listeners), proxy
        finally:
            proxy.close()


# ---------------------------------------------------------------------------------------------
# The matrix


def rtts_by_hosts(args: argparse.Namespace) -> dict[int, list[float]]:
    default = [float(x) for x in args.rtt.split(",")]
    plan = {int(n): list(default) for n in args.hosts.split(",")}
    for item in args.rtt_for:
        n, _, rtts = item.partition(":")
        plan[int(n)] = [float(x) for x in rtts.split(",")]
    return plan


def measure_one(tool: Tool, hosts: HostSet, proxy: ProxyProcess, rundir: Path) -> tuple[
        Result, dict[str, dict[str, int]]]:  # fmt: skip
    proxy.ask("reset")
    result = run_tool(tool, hosts, rundir)
    time.sleep(0.2)  # let the last closes reach the proxy
    return result, proxy.ask("counts")


def bench_hosts(
    n: int, rtts: Sequence[float], args: argparse.Namespace, tools: list[Tool], base: Path
) -> list[RttRecord]:
    records: list[RttRecord] = []
    workdir = base / f"rtt-hosts-{n}"
    workdir.mkdir(parents=True)
    started = time.monotonic()
    with behind_proxy(workdir, n) as (hosts, proxy):
        ready = time.monotonic() - started
        print(f"# {n} sshd hosts behind the proxy in {ready:.1f} s", flush=True)
        peer_repeat = args.peer_repeat if args.peer_repeat is not None else args.repeat
        for rtt in rtts:
            proxy.set_rtt(rtt)
            for workload_name in args.workloads.split(","):
                workload = make_workload(workload_name, [h.name for h in hosts.hosts], args.seed)
                hosts.set_durations(workload.switch, workload.test)
                runs: dict[str, list[tuple[Result, dict[str, dict[str, int]]]]] = {
                    t.name: [] for t in tools
                }
                for r in range(max(args.repeat, peer_repeat)):
                    for tool in tools:
                        own = tool.name.startswith(("fleet", "floor"))
                        if r >= (args.repeat if own else peer_repeat):
                            continue
                        name = f"{rtt:g}ms-{workload_name}-{tool.name}-{r}".replace(" ", "_")
                        result, counts = measure_one(tool, hosts, proxy, workdir / "runs" / name)
                        runs[tool.name].append((result, counts))
                        trips = rtt_report.per_host(counts)
                        status = "ok" if result.ok else f"FAILED {result.note}"
                        print(
                            f"  {rtt:5g} ms {workload_name:5} {tool.name:25} "
                            f"{result.measurement.wall:7.2f} s {trips[0]:6.1f} rt/host {status}",
                            flush=True,
                        )
                block = [
                    rtt_report.record(
                        n, rtt, workload_name, pool,
                        hosts_ideal=workload.ideal(pool[0][0].mode),
                        round_trips_ideal=SETUP_ROUND_TRIPS + OPS,
                    )
                    for pool in runs.values() if pool
                ]  # fmt: skip
                records += block
                print("\n" + rtt_report.text_table(block) + "\n", flush=True)
    return records


# ---------------------------------------------------------------------------------------------
# --inventory: round trips per op


INVENTORY: tuple[tuple[str, list[str]], ...] = (
    ("fleet op pull", ["op", "pull"]),
    ("fleet op switch", ["op", "switch"]),
    ("fleet op test", ["op", "test"]),
    ("fleet do-all (lockstep)", ["do-all", "--mode", "lockstep"]),
    ("fleet do-all (streaming)", ["do-all", "--mode", "streaming"]),
)
INVENTORY_FLOORS = ("floor-shell-lockstep", "floor-sessions-lockstep")


def inventory(args: argparse.Namespace, base: Path) -> int:
    """Each of fleet's single ops and do-all, and the floors, on 2 hosts: round trips each."""
    workdir = base / "inventory"
    workdir.mkdir(parents=True)
    rows: list[tuple[str, dict[str, dict[str, int]], dict[str, list[list[list[int]]]]]] = []
    with behind_proxy(workdir, 2) as (hosts, proxy):
        proxy.set_rtt(args.inventory_rtt)
        for label, words in INVENTORY:
            hosts.new_commit()
            env = {**_fleet_env(hosts)}
            argv = [
                FLEET_PYTHON, "-m", "fleet", "--config", str(hosts.fleet_config),
                "--state-dir", str(hosts.workdir / "fleet-state"), *words, "--json",
            ]  # fmt: skip
            proxy.ask("reset")
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            time.sleep(0.2)
            if proc.returncode != 0:
                print(f"# {label}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
            rows.append((label, proxy.ask("counts"), proxy.ask("log")))
        for tool_name in INVENTORY_FLOORS:
            tool = TOOLS[tool_name]
            proxy.ask("reset")
            run_tool(tool, hosts, workdir / "runs" / tool_name)
            time.sleep(0.2)
            rows.append((tool.name, proxy.ask("counts"), proxy.ask("log")))
    print(f"round trips per host at RTT {args.inventory_rtt:g} ms (connections + turns)\n")
    for label, counts, log in rows:
        trips, conns = rtt_report.per_host(counts)
        print(f"{label:28} {trips:5.1f} round trips/host, {conns:.1f} connections/host")
        first = sorted(log)[0]
        for k, turns in enumerate(log[first]):
            sizes = " ".join(f"{c}/{s}" for c, s in turns)
            print(f"    {first} connection {k + 1}: {len(turns)} turns (bytes c/h): {sizes}")
    return 0


def _fleet_env(hosts: HostSet) -> dict[str, str]:
    from bench.tools import _base_env

    env = _base_env(hosts.workdir / "fleet-home")
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.render:
        rtt_report.write(out, rtt_report.load(rtt_report.data_path(out)))
        return 0
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
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fleet-rtt-"))
    try:
        return inventory(args, base) if args.inventory else matrix(args, tools, base, argv)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)


def matrix(
    args: argparse.Namespace, tools: list[Tool], base: Path, argv: Sequence[str] | None
) -> int:
    out = Path(args.out)
    records: list[RttRecord] = []
    for n, rtts in rtts_by_hosts(args).items():
        block = bench_hosts(n, rtts, args, tools, base)
        records += block
        if not args.no_write:  # after each host count: a long run keeps what it measured
            words = list(sys.argv[1:] if argv is None else argv)
            command = ".venv/bin/python bench/rtt.py " + shlex.join(words)
            data = rtt_report.merge(
                rtt_report.load(rtt_report.data_path(out)), block, command, machine_info()
            )
            rtt_report.save(out, data)
            rtt_report.write(out, data)
            print(f"# wrote {out}, its RTT data and plot", flush=True)
    return 0 if all(r.ok for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
