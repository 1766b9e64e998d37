"""`fleet serve`: the dashboard (fleet.web) on --listen, with the token of --token-file."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fleet.api import state_dir_from
from fleet.config.inventory import find_config
from fleet.errors import ConfigError

if TYPE_CHECKING:
    from fleet.cli.context import AppContext

DEFAULT_LISTEN = "127.0.0.1:8470"


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"--listen: expected HOST:PORT, e.g. {DEFAULT_LISTEN} (got {text!r})")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def browsable(url: str) -> str:
    """A URL a browser can open: a wildcard address becomes the loopback one."""
    return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


@click.command("serve")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen (port 0: any free port).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The access token (default: <state dir>/token, generated on first start, mode 0600).",
)
@click.pass_obj
def serve_cmd(app: AppContext, listen: str, token_file: Path | None) -> None:
    """Serve the dashboard: hosts, runs, logs, live updates and a JSON API."""
    from fleet.web import WebSettings, load_token, serve  # aiohttp: not on every command's path

    host, port = parse_listen(listen)
    config = find_config(app.config)
    state_dir = state_dir_from(app.state_dir)
    token = load_token(token_file, state_dir)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="fleet serve: %(message)s")
    logging.getLogger("fleet.web").setLevel(logging.INFO)
    if app.verbose:
        logging.getLogger("fleet.web.access").setLevel(logging.INFO)
    if not is_loopback(host):
        click.echo(
            f"fleet serve: warning: {host} is not a loopback address; the token and the session "
            "cookie cross the network unencrypted unless a TLS proxy is in front",
            err=True,
        )
    if token.generated:
        click.echo(f"fleet serve: generated a new token in {token.path}", err=True)

    def ready(url: str) -> None:
        url = browsable(url)
        click.echo(f"fleet serve: listening on {url}", err=True)
        if sys.stdout.isatty():
            click.echo(f"Open the dashboard: {url}login#token={token.value}")
        else:
            click.echo(f"fleet serve: the token is in {token.path}", err=True)

    settings = WebSettings(config=config, state_dir=state_dir, token=token.value)
    try:
        asyncio.run(serve(settings, host, port, ready=ready, access_log=bool(app.verbose)))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
