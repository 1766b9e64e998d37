"""Who may use the dashboard: one token, sessions derived from it, and same-origin writes.

There is always a token. `--token-file FILE` names it; without it fleet keeps one in
`<state dir>/token`, generated on first start (mode 0600). The token is never written anywhere
else: not in pages, API answers, logs or the state store.

A request is authenticated by either

- `Authorization: Bearer <token>` (scripts, curl), or
- the `fleet_session` cookie, set by logging in with the token (`POST /login`): HttpOnly,
  SameSite=Strict, Path=/. Its value is `<expiry>.<HMAC-SHA256(token, expiry)>`, so it survives
  a restart of the service, expires, and every session ends when the token changes.

Every comparison of a secret is constant-time (`hmac.compare_digest`). A request that changes
anything (any method but GET and HEAD) must come from the dashboard's own origin: a foreign
`Origin` (or `Referer`) is refused, and so is a cookie-authenticated one that names no origin.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from fleet.errors import ConfigError

TOKEN_NAME = "token"  # the generated token's file in the state directory
MIN_TOKEN_LENGTH = 16
COOKIE = "fleet_session"
SESSION_SECONDS = 7 * 24 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class TokenSource:
    """The token and where it is kept (the path is what a service logs; never the value)."""

    value: str
    path: Path
    generated: bool  # created by this start


def load_token(token_file: Path | None, state_dir: Path) -> TokenSource:
    """The token of `--token-file`, else `<state_dir>/token` (created on first start)."""
    if token_file is not None:
        return TokenSource(_read_token(token_file), token_file, generated=False)
    path = state_dir / TOKEN_NAME
    generated = False
    if not path.exists():
        generated = _create_token(path)
    mode = path.stat().st_mode
    if mode & 0o077:
        raise ConfigError(
            f"token file {path} may be read by others (mode {stat.S_IMODE(mode):04o}): "
            "chmod 600 it, or delete it to get a new token"
        )
    return TokenSource(_read_token(path), path, generated)


def _create_token(path: Path) -> bool:
    """Write a new random token with mode 0600; False when another process won the race."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ConfigError(f"cannot create the token file {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_urlsafe(32) + "\n")
    return True


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"token file {path}: not text") from None
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable():
        raise ConfigError(
            f"token file {path}: the token must be at least {MIN_TOKEN_LENGTH} printable "
            "ASCII characters on one line"
        )
    if any(c.isspace() for c in token):
        raise ConfigError(f"token file {path}: the token must not contain spaces")
    return token


class Authenticator:
    """Checks bearer tokens and session cookies; issues sessions."""

    def __init__(
        self,
        token: str,
        *,
        session_seconds: int = SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._token = token.encode()
        self._key = hmac.digest(self._token, b"fleet dashboard session key", hashlib.sha256)
        self.session_seconds = session_seconds
        self._clock = clock

    def check_token(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def check_bearer(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value.strip())

    def new_session(self) -> str:
        expires = str(int(self._clock()) + self.session_seconds)
        return f"{expires}.{self._mac(expires)}"

    def check_session(self, value: str | None) -> bool:
        if not value:
            return False
        expires, _, mac = value.partition(".")
        if not expires.isdigit() or not hmac.compare_digest(mac, self._mac(expires)):
            return False
        return int(expires) > self._clock()

    def _mac(self, expires: str) -> str:
        return hmac.digest(self._key, expires.encode(), hashlib.sha256).hex()

    def authenticated(self, request: web.Request) -> str | None:
        """How `request` proves it may use the dashboard: "bearer", "cookie" or None."""
        if self.check_bearer(request.headers.get("Authorization")):
            return "bearer"
        if self.check_session(request.cookies.get(COOKIE)):
            return "cookie"
        return None


def foreign_origin(request: web.Request, via: str | None) -> str | None:
    """Why a state-changing request must be refused as cross-origin, or None when it may go.

    The request's own origin is its Host header; `Origin` (else `Referer`) must name it. A
    browser always sends one of them with a POST; a request naming neither is accepted only
    with a bearer token (a script, which no other web page can make a browser send)."""
    claimed = request.headers.get("Origin") or request.headers.get("Referer")
    if claimed is None:
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site not in (None, "same-origin", "none"):
            return f"a {fetch_site} request"
        return None if via == "bearer" else "a request that names no origin"
    if claimed == "null":
        return "a request from an opaque origin"
    parts = urlsplit(claimed)
    if parts.scheme not in ("http", "https") or parts.netloc.lower() != request.host.lower():
        return f"a request from {parts.scheme}://{parts.netloc}"
    return None
