"""Commands that read the record: status, history, logs, prune."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from fleet.cli.context import AppContext, pass_app
from fleet.cli.run import tail_reader
from fleet.errors import ConfigError
from fleet.models import CONTROLLER, RunStatus


@click.command("status")
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def status_cmd(app: AppContext, /, run_id: str | None, as_json: bool) -> None:
    """Show a run (default: the latest); exit with the run's code (0 COMPLETE, 1 FAILED or
    ABORTED or still RUNNING, 3 PARTIAL, 130 CANCELLED), so that scripts can branch on it."""
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
    else:
        from fleet.cli.tables import render_summary

        click.echo(render_summary(run, read_tail=tail_reader(store, run)))
    raise SystemExit(run.status.exit_code)


@click.command("history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def history_cmd(app: AppContext, /, limit: int, as_json: bool) -> None:
    """List recent runs, newest first."""
    runs = app.store().list_runs(limit)
    if as_json:
        click.echo(json.dumps([r.summary_json() for r in runs], indent=2))
        return
    from fleet.cli.tables import render_table

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


@click.command("logs")
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
        for who, op_id in run.log_keys(host, op):
            path = store.log_path(rid, who, op_id)
            key = (who or CONTROLLER, op_id)
            printed |= _print_new(out, path, offsets, key, header=not (host and op))
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


@click.command("prune")
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
