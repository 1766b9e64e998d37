"""The dashboard: `fleet serve`'s web page, JSON API and live event stream (aiohttp).

Modules::

    app.py       the application factory, the guard (token, same-origin writes) and `serve`
    auth.py      the token file, bearer and session-cookie checks, the origin check
    handlers.py  the JSON API
    runs.py      RunManager: runs started here, in background tasks, cancellable
    stream.py    EventHub: executor events and other processes' runs as Server-Sent Events
    overview.py  per-host and per-pipeline summaries for the page
    openapi.py   the API's OpenAPI description
    static/      the page: plain HTML, CSS and JavaScript, no build step
"""

from fleet.web.app import WebSettings, create_app, serve
from fleet.web.auth import TokenSource, load_token

__all__ = ["TokenSource", "WebSettings", "create_app", "load_token", "serve"]
