"""Commands that run pipelines: run, the shortcuts, op, retry, demo."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fleet.api import Fleet, PlannedRun
from fleet.cli.context import EXIT_CANCELLED, AppContext, pass_app
from fleet.errors import FleetError
from fleet.events import Subscriber
from fleet.models import CONTROLLER, Mode, Run, RunOptions, RunStatus, Scope
from fleet.state import StateStore

F = Callable[..., Any]

# A closed terminal (SIGHUP) cancels a run as Ctrl-C and SIGTERM do: recorded, remote work
# stopped, host locks freed.
CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    return RunOptions.parse(
        mode=mode,
        max_parallel=max_parallel,
        max_fail=max_fail,
        rollback_on_failure=rollback_on_failure,
        pr=pr,
        selector=selector,
    )


@click.command("run")
@click.argument("pipeline")
@run_options
@pass_app
def run_cmd(app: AppContext, /, pipeline: str, dry_run: bool, as_json: bool, **kw: Any) -> None:
    """Run PIPELINE (see `fleet pipelines`)."""
    execute_pipeline(app, pipeline, build_options(**kw), dry_run=dry_run, as_json=as_json)


def _shortcut(name: str, doc: str) -> click.Command:
    @run_options
    @pass_app
    def command(app: AppContext, /, dry_run: bool, as_json: bool, **kw: Any) -> None:
        execute_pipeline(app, name, build_options(**kw), dry_run=dry_run, as_json=as_json)

    command.__doc__ = doc
    return click.command(name)(command)


SHORTCUTS = [
    _shortcut("do-all", "Pull, switch and test on every host (the do-all pipeline)."),
    _shortcut("merge-deploy", "Merge --pr N on the controller, then pull, switch and test."),
    _shortcut("update-agent", "Bump fleet's flake input, pull, switch and restart the agent."),
    _shortcut("force-update", "Rebuild bypassing caches, then restart the agent."),
]


@click.command("op")
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


@click.command("retry")
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
        _echo(json.dumps(run.to_json(), indent=2))
    else:
        from fleet.cli.tables import render_summary

        _echo(render_summary(run, read_tail=tail_reader(fleet.store, run)))
    raise SystemExit(run.status.exit_code)


async def _execute(app: AppContext, /, fleet: Fleet, plan: PlannedRun, *, as_json: bool) -> Run:
    from fleet.cli.lineviews import JsonProgress, PlainView
    from fleet.cli.liveview import LiveView
    from fleet.cli.sink import ViewSink

    with contextlib.suppress(ImportError):
        from fleet.transport.ssh import raise_nofile_limit

        raise_nofile_limit()
    subscribers: list[Subscriber] = []
    live: LiveView | None = None
    sink = ViewSink(sys.stderr if as_json else sys.stdout)
    if as_json:
        subscribers.append(JsonProgress(sink))
    elif sink.isatty() and not app.verbose:
        host_ops = [
            op for op in plan.pipeline.ops if fleet.inventory.ops.get(op).scope is Scope.HOST
        ]
        live = LiveView(sink, hosts=[h.name for h in plan.hosts], ops=host_ops)
        subscribers.append(live)
    else:
        subscribers.append(PlainView(sink, verbose=bool(app.verbose)))
    executor = fleet.prepare(subscribers)
    loop = asyncio.get_running_loop()
    for sig in CANCEL_SIGNALS:
        loop.add_signal_handler(sig, executor.cancel)
    refresher = asyncio.create_task(_refresh(live)) if live else None
    try:
        return await fleet.execute(plan, executor)
    finally:
        if refresher:
            refresher.cancel()
        if live:
            live.stop()
        for sig in CANCEL_SIGNALS:
            loop.remove_signal_handler(sig)
        sink.close()
        if note := sink.note():
            _echo(note, err=True)


def _echo(text: str, *, err: bool = False) -> None:
    """`click.echo` for what a run prints once it is over: a stream that is closed or broken
    costs the text, never the exit code (nor a traceback)."""
    from fleet.cli.sink import quiet_if_broken

    stream = sys.stderr if err else sys.stdout
    try:
        click.echo(text, err=err)
    except OSError:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            quiet_if_broken(stream.fileno())


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


def tail_reader(store: StateStore, run: Run) -> Callable[[str, str], str]:
    def read_tail(host: str, op: str) -> str:
        try:
            data = store.read_log(run.run_id, None if host == CONTROLLER else host, op, last=65536)
        except (FleetError, OSError):
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-20:])

    return read_tail


@click.command("demo")
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

    from fleet.demo.simulation import start_demo

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
            from fleet.cli.tables import render_summary

            click.echo(render_summary(run, read_tail=tail_reader(fleet.store, run)))
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
