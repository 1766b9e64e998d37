"""The dashboard's aiohttp application: routes, the guard in front of them, and `serve`.

One asyncio process serves the page, the JSON API and the event stream, and runs pipelines
with the same executor and state store as the CLI. Only GET /healthz, the login page (with its
script and style sheet), logging in and logging out answer without the token; see
fleet.web.auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from fleet.errors import FleetError
from fleet.state import StateStore
from fleet.transport.base import SessionFactory
from fleet.web import handlers
from fleet.web.auth import COOKIE, SAFE_METHODS, Authenticator, foreign_origin
from fleet.web.openapi import openapi
from fleet.web.runs import ConfigSource, RunManager
from fleet.web.stream import EventHub

log = logging.getLogger("fleet.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
PUBLIC_GET = frozenset({"/healthz", "/login", "/static/login.js", "/static/style.css"})
PUBLIC_POST = frozenset({"/login", "/logout"})  # still same-origin only
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # not no-referrer: that makes form POSTs send Origin: null
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class WebSettings:
    config: Path  # fleet.toml, read again when it changes
    state_dir: Path
    token: str = field(repr=False)
    poll_interval: float = 1.0  # how often the store is polled for other processes' runs
    session_factory: SessionFactory | None = field(default=None, repr=False)


AUTH = web.AppKey("auth", Authenticator)
HUB = web.AppKey("hub", EventHub)
SETTINGS = web.AppKey("settings", WebSettings)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Same-origin writes, then the token (bearer or session cookie), then the handler."""
    auth = request.app[AUTH]
    via = auth.authenticated(request)
    if request.method not in SAFE_METHODS:
        why = foreign_origin(request, via)
        if why is not None:
            log.warning("refused %s %s: %s", request.method, request.path, why)
            return handlers.error(403, f"refused: {why} (requests that change anything must "
                                  "come from the dashboard's own page)")  # fmt: skip
    public = (request.method in ("GET", "HEAD") and request.path in PUBLIC_GET) or (
        request.method == "POST" and request.path in PUBLIC_POST
    )
    if via is None and not public:
        if request.method in ("GET", "HEAD") and not request.path.startswith("/api/"):
            raise web.HTTPSeeOther("/login")
        response = handlers.error(401, "authentication required: a bearer token or a login")
        response.headers["WWW-Authenticate"] = 'Bearer realm="fleet"'
        return response
    try:
        return await handler(request)
    except FleetError as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        return handlers.fleet_error(exc)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


# -- pages --------------------------------------------------------------------------------------


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def login_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "login.html")


async def login(request: web.Request) -> web.StreamResponse:
    """POST /login (form field `token`): set the session cookie, or back to the form."""
    form = await request.post()
    token = form.get("token")
    auth = request.app[AUTH]
    if not isinstance(token, str) or not auth.check_token(token.strip()):
        log.warning("failed login from %s", request.remote)
        raise web.HTTPSeeOther("/login?failed=1")
    response = web.Response(status=303, headers={"Location": "/"})
    response.set_cookie(
        COOKIE,
        auth.new_session(),
        max_age=auth.session_seconds,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(COOKIE, path="/")
    return response


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi())


async def events(request: web.Request) -> web.StreamResponse:
    return await request.app[HUB].stream(request)


# -- the application ----------------------------------------------------------------------------


def create_app(settings: WebSettings) -> web.Application:
    """The dashboard; the state store opens when the app starts and closes when it stops."""
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[AUTH] = Authenticator(settings.token)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_services)
    app.on_shutdown.append(_stop_streams_and_runs)
    app.on_response_prepare.append(_security_headers)
    r = app.router
    r.add_get("/", index)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/healthz", handlers.healthz)
    r.add_get("/api/hosts", handlers.get_hosts)
    r.add_get("/api/pipelines", handlers.get_pipelines)
    r.add_get("/api/runs", handlers.list_runs)
    r.add_post("/api/runs", handlers.post_run)
    r.add_get("/api/runs/{run_id}", handlers.get_run)
    r.add_post("/api/runs/{run_id}/cancel", handlers.cancel_run)
    r.add_get("/api/runs/{run_id}/logs", handlers.get_logs)
    r.add_get("/api/events", events)
    r.add_get("/api/openapi.json", openapi_json)
    r.add_static("/static", STATIC_DIR, show_index=False, follow_symlinks=False)
    return app


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    config = ConfigSource(settings.config)
    config.inventory()  # a broken fleet.toml stops the start, with its message
    store = StateStore(settings.state_dir)
    manager = RunManager(config, store, session_factory=settings.session_factory)
    hub = EventHub(store, is_local=manager.is_local, poll_interval=settings.poll_interval)
    manager.subscribers.append(hub.publish)
    app[handlers.MANAGER] = manager
    app[HUB] = hub
    watcher = asyncio.create_task(hub.watch_store())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await manager.shutdown()
        store.close()


async def _stop_streams_and_runs(app: web.Application) -> None:
    app[HUB].close()
    await app[handlers.MANAGER].shutdown()


# -- serving ------------------------------------------------------------------------------------


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def serve(
    settings: WebSettings,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None],
    access_log: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM; `ready(url)` once listening (port 0: the real port).
    Runs still going when it stops are cancelled and recorded as CANCELLED."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=logging.getLogger("fleet.web.access") if access_log
                           else None, handle_signals=False)  # fmt: skip
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=5)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ready(url_of(host, bound))
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
