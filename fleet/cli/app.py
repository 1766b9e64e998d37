"""The click app: the `fleet` group and `main`.

`main` alone maps errors to exit codes and one line of text:
0 COMPLETE, 1 FAILED, 2 usage or config error (also state store errors), 3 PARTIAL,
130 CANCELLED.
"""

from __future__ import annotations

import click

from fleet import __version__
from fleet.cli import inventory, record, run
from fleet.cli.context import EXIT_CANCELLED, EXIT_USAGE, AppContext, pass_app
from fleet.cli.serve import serve_cmd
from fleet.errors import FleetError

__all__ = ["AppContext", "cli", "main", "pass_app"]


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


for command in (
    run.run_cmd,
    *run.SHORTCUTS,
    run.op_cmd,
    run.retry_cmd,
    inventory.hosts_cmd,
    inventory.ops_cmd,
    inventory.pipelines_cmd,
    record.status_cmd,
    record.history_cmd,
    record.logs_cmd,
    record.prune_cmd,
    run.demo_cmd,
    serve_cmd,
):
    cli.add_command(command)


def _error(message: str) -> None:
    """One line, whatever the message holds (a path or a value given with a line break, an
    escape sequence...): characters that are not printable are shown escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    click.echo(f"fleet: error: {shown}", err=True)


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
