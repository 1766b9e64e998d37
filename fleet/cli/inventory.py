"""Commands that show the inventory: hosts, ops, pipelines."""

from __future__ import annotations

import json

import click

from fleet.cli.context import AppContext, pass_app
from fleet.config.inventory import find_config, load_inventory


@click.command("hosts")
@click.option("--on", "selector", metavar="SELECTOR", help="Only these hosts.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def hosts_cmd(app: AppContext, /, selector: str | None, as_json: bool) -> None:
    """List the hosts of fleet.toml with their resolved settings."""
    from fleet.cli.tables import render_table
    from fleet.config.selection import select_hosts

    inventory = load_inventory(find_config(app.config))
    hosts = select_hosts(inventory, selector)
    if as_json:
        click.echo(json.dumps([h.to_json() for h in hosts], indent=2))
        return
    rows = [
        [h.name, f"{h.user}@{h.hostname}:{h.port}", ",".join(h.tags), h.repo, h.branch, h.attr]
        for h in hosts
    ]
    click.echo(render_table(["HOST", "SSH", "TAGS", "REPO", "BRANCH", "ATTR"], rows))


@click.command("ops")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def ops_cmd(app: AppContext, /, as_json: bool) -> None:
    """List the ops (built-in and from fleet.toml)."""
    from fleet.cli.tables import render_table

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


@click.command("pipelines")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def pipelines_cmd(app: AppContext, /, as_json: bool) -> None:
    """List the pipelines (built-in and from fleet.toml)."""
    from fleet.cli.tables import render_table

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
