"""The click app: parse, build models, call `fleet.api`, show the result.

`main` alone maps errors to exit codes and one line of text:
0 COMPLETE, 1 FAILED, 2 usage or config error (also state store errors), 3 PARTIAL,
130 CANCELLED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import click

from fleet import __version__
from fleet.api import Fleet, PlannedRun, state_dir_from
from fleet.config import find_config, load_inventory
from fleet.errors import ConfigError, FleetError
from fleet.events import Subscriber
from fleet.executor import MaxFail, RunOptions
from fleet.models import Mode, Run, RunStatus, Scope
from fleet.state import StateStore

EXIT_USAGE = 2
EXIT_CANCELLED = 130

F = Callable[..., Any]


@dataclass
class AppContext:
    config: str | None
    state_dir: str | None
    verbose: int
    _fleet: Fleet | None = None
    _store: StateStore | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def fleet(self) -> Fleet:
        if self._fleet is None:
            inventory = load_inventory(find_config(self.config))
            self._fleet = Fleet(inventory, self.store())
        return self._fleet

    def store(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(state_dir_from(self.state_dir))
            self.closers.append(self._store.close)
        return self._store


pass_app = click.make_pass_decorator(AppContext)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    metavar="PATH",
    help="fleet.toml (default: $FLEET_CONFIG, ./fleet.toml, then the user config dir).",
)
@click.option(
    "--state-dir",
    metavar="DIR",
    help="Run records and logs (default: $FLEET_STATE_DIR, then the user state dir).",
)
@click.option("-v", "--verbose", count=True, help="Show each op's output as it runs.")
@click.version_option(__version__, prog_name="fleet")
@click.pass_context
def cli(ctx: click.Context, config: str | None, state_dir: str | None, verbose: int) -> None:
    """Run deployment pipelines across a fleet of NixOS hosts over SSH."""
    app = AppContext(config, state_dir, verbose)
    ctx.obj = app
    ctx.call_on_close(lambda: [close() for close in app.closers])


# -- running pipelines --------------------------------------------------------------------------


def run_options(func: F) -> F:
    options = [
        click.option(
            "--on",
            "selector",
            metavar="SELECTOR",
            help="Hosts: names, globs (web-*) and tags (@eu), comma-separated.",
        ),
        click.option(
            "--mode",
            type=click.Choice([m.value for m in Mode]),
            default="lockstep",
            show_default=True,
            help="lockstep: every host finishes an op before the "
            "next; streaming: each host goes on alone.",
        ),
        click.option(
            "--max-parallel",
            type=click.IntRange(min=1),
            metavar="N",
            help="At most N hosts at once (default: all).",
        ),
        click.option(
            "--max-fail",
            metavar="N|P%",
            help="Start nothing new once more than N (or P%) hosts have failed.",
        ),
        click.option(
            "--rollback-on-failure",
            is_flag=True,
            help="Roll back a host whose test (or any op after switch) fails.",
        ),
        click.option(
            "--dry-run", is_flag=True, help="Print the hosts and exact commands; run nothing."
        ),
        click.option(
            "--pr", type=click.IntRange(min=1), metavar="N", help="Pull request number (merge-pr)."
        ),
        click.option(
            "--json", "as_json", is_flag=True, help="Progress on stderr, one JSON object on stdout."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_options(
    selector: str | None,
    mode: str,
    max_parallel: int | None,
    max_fail: str | None,
    rollback_on_failure: bool,
    pr: int | None,
) -> RunOptions:
    return RunOptions(
        mode=Mode(mode),
        max_parallel=max_parallel,
        max_fail=MaxFail.parse(max_fail) if max_fail else None,
        rollback_on_failure=rollback_on_failure,
        pr=pr,
        selector=selector,
    )


@cli.command("run")
@click.argument("pipeline")
@run_options
@pass_app
def run_cmd(app: AppContext, /, pipeline: str, dry_run: bool, as_json: bool, **kw: Any) -> None:
    """Run PIPELINE (see `fleet pipelines`)."""
    execute_pipeline(app, pipeline, build_options(**kw), dry_run=dry_run, as_json=as_json)


def _shortcut(name: str, doc: str) -> None:
    @run_options
    @pass_app
    def command(app: AppContext, /, dry_run: bool, as_json: bool, **kw: Any) -> None:
        execute_pipeline(app, name, build_options(**kw), dry_run=dry_run, as_json=as_json)

    command.__doc__ = doc
    cli.command(name)(command)


_shortcut("do-all", "Pull, switch and test on every host (the do-all pipeline).")
_shortcut("merge-deploy", "Merge --pr N on the controller, then pull, switch and test.")
_shortcut("update-agent", "Bump fleet's flake input, pull, switch and restart the agent.")
_shortcut("force-update", "Rebuild bypassing caches, then restart the agent.")


@cli.command("op")
@click.argument("op")
@click.option("--on", "selector", metavar="SELECTOR", help="Hosts (as for run).")
@click.option("--pr", type=click.IntRange(min=1), metavar="N", help="Pull request number.")
@click.option("--dry-run", is_flag=True, help="Print the exact commands; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@pass_app
def op_cmd(
    app: AppContext, /, op: str, selector: str | None, pr: int | None, dry_run: bool, as_json: bool
) -> None:
    """Run a single OP, stored as a run of pipeline `op:OP`."""
    options = RunOptions(selector=selector, pr=pr)
    execute_pipeline(app, f"op:{op}", options, dry_run=dry_run, as_json=as_json)


@cli.command("retry")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--dry-run", is_flag=True, help="Print what would run; run nothing.")
@pass_app
def retry_cmd(app: AppContext, /, run_id: str, as_json: bool, dry_run: bool) -> None:
    """Run again the hosts of RUN_ID that did not complete, from where each stopped."""
    fleet = app.fleet()
    plan = fleet.plan_retry(run_id)
    run_plan(app, fleet, plan, dry_run=dry_run, as_json=as_json)


def execute_pipeline(
    app: AppContext, /, pipeline: str, options: RunOptions, *, dry_run: bool, as_json: bool
) -> None:
    fleet = app.fleet()
    plan = fleet.plan(pipeline, options)
    run_plan(app, fleet, plan, dry_run=dry_run, as_json=as_json)


def run_plan(
    app: AppContext, /, fleet: Fleet, plan: PlannedRun, *, dry_run: bool, as_json: bool
) -> None:
    if dry_run:
        show_dry_run(fleet, plan, as_json=as_json)
        return
    run = asyncio.run(_execute(app, fleet, plan, as_json=as_json))
    if as_json:
        click.echo(json.dumps(run.to_json(), indent=2))
    else:
        from fleet.cli.views import render_summary

        click.echo(render_summary(run, read_tail=_tail_reader(fleet.store, run)))
    raise SystemExit(run.status.exit_code)


async def _execute(app: AppContext, /, fleet: Fleet, plan: PlannedRun, *, as_json: bool) -> Run:
    from fleet.cli import views

    with contextlib.suppress(ImportError):
        from fleet.transport.ssh import raise_nofile_limit

        raise_nofile_limit()
    subscribers: list[Subscriber] = []
    live: views.LiveView | None = None
    if as_json:
        subscribers.append(views.JsonProgress(sys.stderr))
    elif sys.stdout.isatty() and not app.verbose:
        host_ops = [
            op for op in plan.pipeline.ops if fleet.inventory.ops.get(op).scope is Scope.HOST
        ]
        live = views.LiveView(sys.stdout, hosts=[h.name for h in plan.hosts], ops=host_ops)
        subscribers.append(live)
    else:
        subscribers.append(views.PlainView(sys.stdout, verbose=bool(app.verbose)))
    executor = fleet.prepare(subscribers)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, executor.cancel)
    refresher = asyncio.create_task(_refresh(live)) if live else None
    try:
        return await fleet.execute(plan, executor)
    finally:
        if refresher:
            refresher.cancel()
        if live:
            live.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _refresh(live: Any) -> None:
    while True:
        await asyncio.sleep(0.25)
        live.refresh()


def show_dry_run(fleet: Fleet, plan: PlannedRun, *, as_json: bool) -> None:
    rows = fleet.dry_run(plan)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "pipeline": plan.pipeline.id,
                    "hosts": [h.name for h in plan.hosts],
                    "steps": [{"host": h, "op": o, "command": c} for h, o, c in rows],
                },
                indent=2,
            )
        )
        return
    click.echo(f"pipeline {plan.pipeline.id}: {' → '.join(plan.pipeline.ops)}")
    click.echo(f"hosts ({len(plan.hosts)}): " + ", ".join(h.name for h in plan.hosts))
    for host, op, command in rows:
        click.echo(f"\n# {host}: {op}")
        click.echo(command.rstrip("\n"))


def _tail_reader(store: StateStore, run: Run) -> Callable[[str, str], str]:
    def read_tail(host: str, op: str) -> str:
        try:
            data = store.read_log(
                run.run_id, None if host == "controller" else host, op, last=65536
            )
        except (FleetError, OSError):
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-20:])

    return read_tail


# -- inventory --------------------------------------------------------------------------------


@cli.command("hosts")
@click.option("--on", "selector", metavar="SELECTOR", help="Only these hosts.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def hosts_cmd(app: AppContext, /, selector: str | None, as_json: bool) -> None:
    """List the hosts of fleet.toml with their resolved settings."""
    from fleet.cli.views import render_table
    from fleet.config import select_hosts

    inventory = load_inventory(find_config(app.config))
    hosts = select_hosts(inventory, selector)
    if as_json:
        click.echo(json.dumps([_host_json(h) for h in hosts], indent=2))
        return
    rows = [
        [h.name, f"{h.user}@{h.hostname}:{h.port}", ",".join(h.tags), h.repo, h.branch, h.attr]
        for h in hosts
    ]
    click.echo(render_table(["HOST", "SSH", "TAGS", "REPO", "BRANCH", "ATTR"], rows))


def _host_json(h: Any) -> dict[str, Any]:
    return {
        "name": h.name,
        "address": h.address,
        "hostname": h.hostname,
        "port": h.port,
        "user": h.user,
        "tags": list(h.tags),
        "repo": h.repo,
        "remote": h.remote,
        "branch": h.branch,
        "sudo": h.sudo,
        "flake_attr": h.attr,
        "restart_units": list(h.restart_units),
        "system_profile": h.system_profile,
        "detach": h.detach.value,
        "proxy_jump": h.proxy_jump,
    }


@cli.command("ops")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def ops_cmd(app: AppContext, /, as_json: bool) -> None:
    """List the ops (built-in and from fleet.toml)."""
    from fleet.cli.views import render_table

    inventory = load_inventory(find_config(app.config))
    items = [
        {
            "id": o.id,
            "scope": o.scope.value,
            "timeout": o.timeout,
            "warn_after": o.warn_after,
            "retries": o.retries,
            "builtin": o.builtin,
            "description": o.description,
        }
        for o in inventory.ops
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    rows = [
        [o.id, o.scope.value, f"{o.timeout:g}s", str(o.retries), o.description]
        for o in inventory.ops
    ]
    click.echo(render_table(["OP", "SCOPE", "TIMEOUT", "RETRIES", "DESCRIPTION"], rows))


@cli.command("pipelines")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def pipelines_cmd(app: AppContext, /, as_json: bool) -> None:
    """List the pipelines (built-in and from fleet.toml)."""
    from fleet.cli.views import render_table

    inventory = load_inventory(find_config(app.config))
    items = [
        {"id": p.id, "ops": list(p.ops), "description": p.description, "builtin": p.builtin}
        for p in inventory.pipelines
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    rows = [[p.id, " → ".join(p.ops), p.description] for p in inventory.pipelines]
    click.echo(render_table(["PIPELINE", "OPS", "DESCRIPTION"], rows))


# -- the record -------------------------------------------------------------------------------


@cli.command("status")
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def status_cmd(app: AppContext, /, run_id: str | None, as_json: bool) -> None:
    """Show a run (default: the latest)."""
    store = app.store()
    if run_id:
        run = store.get_run(store.resolve_run_id(run_id))
    else:
        latest = store.latest_run()
        if latest is None:
            raise ConfigError("no runs recorded yet")
        run = latest
    if as_json:
        click.echo(json.dumps(run.to_json(), indent=2))
        return
    from fleet.cli.views import render_summary

    click.echo(render_summary(run, read_tail=_tail_reader(store, run)))


@cli.command("history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def history_cmd(app: AppContext, /, limit: int, as_json: bool) -> None:
    """List recent runs, newest first."""
    runs = app.store().list_runs(limit)
    if as_json:
        click.echo(json.dumps([r.summary_json() for r in runs], indent=2))
        return
    from fleet.cli.views import render_table

    rows = []
    for r in runs:
        s = r.summary_json()
        rows.append(
            [
                s["run_id"],
                s["pipeline"],
                s["status"],
                s["started_at"] or "",
                f"{s['hosts_ok']}/{s['hosts_total']}",
                r.retry_of or "",
            ]
        )
    click.echo(render_table(["RUN", "PIPELINE", "STATUS", "STARTED", "OK", "RETRY OF"], rows))


@cli.command("logs")
@click.argument("run_id")
@click.option("--host", metavar="HOST", help="Only this host ('controller' for controller ops).")
@click.option("--op", metavar="OP", help="Only this op.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the run goes on.")
@pass_app
def logs_cmd(
    app: AppContext, /, run_id: str, host: str | None, op: str | None, follow: bool
) -> None:
    """Print the output of a run's ops."""
    store = app.store()
    rid = store.resolve_run_id(run_id)
    out = sys.stdout.buffer
    offsets: dict[tuple[str, str], int] = {}
    while True:
        run = store.get_run(rid)
        printed = False
        for who, op_id in _log_keys(run, host, op):
            path = store.log_path(rid, None if who == "controller" else who, op_id)
            printed |= _print_new(out, path, offsets, (who, op_id), header=not (host and op))
        if not follow or run.status is not RunStatus.RUNNING:
            if not offsets and not printed and not follow:
                click.echo(
                    f"no logs for run {rid}"
                    + (f" host {host}" if host else "")
                    + (f" op {op}" if op else ""),
                    err=True,
                )
            return
        time.sleep(0.5)


def _log_keys(run: Run, host: str | None, op: str | None) -> Iterator[tuple[str, str]]:
    if host is not None and host != "controller" and host not in run.hosts:
        raise ConfigError(f"run {run.run_id} has no host {host!r}")
    if host in (None, "controller"):
        for r in run.controller_ops:
            if op in (None, r.op):
                yield "controller", r.op
    for name, result in run.hosts.items():
        if host in (None, name):
            for r in result.ops:
                if op in (None, r.op):
                    yield name, r.op


def _print_new(
    out: Any, path: Path, offsets: dict[tuple[str, str], int], key: tuple[str, str], header: bool
) -> bool:
    try:
        with path.open("rb") as f:
            start = offsets.get(key, 0)
            f.seek(start)
            data = f.read()
    except OSError:
        return False
    if not data:
        return False
    if header and key not in offsets:
        out.write(f"==> {key[0]} {key[1]} <==\n".encode())
    out.write(data)
    out.flush()
    offsets[key] = start + len(data)
    return True


@cli.command("prune")
@click.option("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 2w.")
@pass_app
def prune_cmd(app: AppContext, /, older_than: str) -> None:
    """Remove finished runs and their logs older than AGE."""
    count = app.store().prune(parse_age(older_than))
    click.echo(f"removed {count} run(s)")


def parse_age(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not match:
        raise ConfigError(f"--older-than: expected a number and s, m, h, d or w (got {text!r})")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match[2]]
    return timedelta(**{unit: int(match[1])})


@cli.command("demo")
@click.option(
    "--hosts",
    "n",
    type=click.IntRange(1, 500),
    default=5,
    show_default=True,
    help="How many simulated hosts.",
)
@click.option("--keep", is_flag=True, help="Keep the demo's directory (config, repos, logs).")
@pass_app
def demo_cmd(app: AppContext, /, n: int, keep: bool) -> None:
    """Try fleet on a simulated fleet: N SSH hosts on loopback, one with a broken config.

    The hosts are served by an SSH server in a separate process, each with a real git
    checkout and a stub nixos-rebuild; a commit that breaks one host's config has just been
    pushed. do-all then runs through the real executor and SSH: that host fails at switch,
    the others pull, switch and test. Needs no sshd and no root.
    """
    import shutil
    import tempfile

    from fleet.demo import start_demo

    workdir = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    click.echo(f"starting {n} simulated host(s) in {workdir} ...", err=True)
    try:
        with start_demo(workdir / "fleet", n) as demo:
            broken = ", ".join(demo.broken) or "none"
            click.echo(f"pushed a commit that breaks host {broken}; running do-all\n", err=True)
            app.config = str(demo.config_path)
            app.state_dir = str(workdir / "state")
            fleet = app.fleet()
            plan = fleet.plan("do-all", RunOptions())
            run = asyncio.run(_execute(app, fleet, plan, as_json=False))
            from fleet.cli.views import render_summary

            click.echo(render_summary(run, read_tail=_tail_reader(fleet.store, run)))
            click.echo(
                f"\nThat was a simulated fleet. Its fleet.toml is {demo.config_path}"
                + ("" if keep else " (removed now; --keep keeps it)")
                + ".\nFor your own hosts, write a fleet.toml (see the README) and run "
                "`fleet do-all`."
            )
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    raise SystemExit(EXIT_CANCELLED if run.status is RunStatus.CANCELLED else 0)


# -- main -------------------------------------------------------------------------------------


def _error(message: str, stream: TextIO | None = None) -> None:
    click.echo(f"fleet: error: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="fleet", standalone_mode=False)
    except SystemExit:
        raise
    except click.exceptions.Abort:
        raise SystemExit(EXIT_CANCELLED) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code) from None
    except FleetError as exc:
        _error(str(exc))
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(EXIT_CANCELLED) from None
    except BrokenPipeError:
        raise SystemExit(1) from None
    raise SystemExit(0)


from fleet.cli.serve import serve_cmd  # noqa: E402 (imported last: it registers itself below)

cli.add_command(serve_cmd)
