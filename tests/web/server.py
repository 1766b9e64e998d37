"""A real `fleet serve` process for the API and browser tests, and a small HTTP/SSE client.

`DashboardServer` starts `python -m fleet --config <fleet.toml> serve --listen 127.0.0.1:0`
in a TestFleet's environment (FLEET_STATE_DIR in the fleet), reads the URL it prints, and
stops it with SIGTERM. Requests go through urllib with no proxy and no redirect following, so
that tests see every status as the server sent it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.integration.harness import TestFleet, wait_until

TOKEN = "test-token-" + "0123456789abcdef" * 2
FINISHED = {"COMPLETE", "PARTIAL", "FAILED", "CANCELLED", "ABORTED"}


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class DashboardServer:
    """`fleet serve` for `fleet` (a TestFleet); `token_file=None` lets it generate one; `env`
    is added to the fleet's environment (e.g. another FLEET_STATE_DIR)."""

    def __init__(
        self, fleet: TestFleet, *, token_file: Path | None, env: Mapping[str, str] | None = None
    ) -> None:
        self.fleet = fleet
        self.token_file = token_file
        self.env = dict(env or {})
        self.stderr_path = fleet.root / f"serve-{time.monotonic_ns()}.err"
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 20) -> DashboardServer:
        args = ["serve", "--listen", "127.0.0.1:0"]
        if self.token_file is not None:
            args += ["--token-file", str(self.token_file)]
        with self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen(
                self.fleet.cli_argv(args),
                env=self.fleet.cli_env(self.env),
                cwd=self.fleet.root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

        def listening() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise AssertionError(f"fleet serve exited: {self.stderr()}")
            for line in self.stderr().splitlines():
                if "listening on " in line:
                    self.url = line.split("listening on ", 1)[1].strip()
                    return True
            return False

        wait_until(listening, timeout, "fleet serve to listen")
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as systemd stops the service; returns the exit status."""
        proc = self._proc
        if proc is None:
            return 0
        self._proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"fleet serve did not stop on SIGTERM: {self.stderr()}") from None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def token(self) -> str:
        path = self.token_file or self.fleet.state_dir / "token"
        return path.read_text().strip()

    # -- requests --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        auth: bool | str = True,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """`auth` True sends the bearer token, a string sends that as the token, False none.
        A POST with `body` sends JSON and, unless `headers` says otherwise, our own Origin."""
        all_headers = {"Accept": "application/json"}
        if auth:
            all_headers["Authorization"] = f"Bearer {self.token if auth is True else auth}"
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        request = urllib.request.Request(
            self.origin + path, data=data, method=method, headers=all_headers
        )
        try:
            with _OPENER.open(request, timeout=30) as answer:
                return Response(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, error.headers, error.read())

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Response:
        return self.request("POST", path, body=body, **kwargs)

    def start_run(self, pipeline: str = "do-all", **fields: Any) -> str:
        answer = self.post("/api/runs", {"pipeline": pipeline, **fields})
        assert answer.status == 202, answer.text
        run_id: str = answer.json()["run_id"]
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        answer = self.get(f"/api/runs/{run_id}")
        assert answer.status == 200, answer.text
        run: dict[str, Any] = answer.json()
        return run

    def wait_run(self, run_id: str, timeout: float = 30) -> dict[str, Any]:
        """The run once it has finished."""
        found: dict[str, Any] = {}

        def finished() -> bool:
            found.update(self.run(run_id))
            return found["status"] in FINISHED

        wait_until(finished, timeout, f"run {run_id} to finish")
        return found

    @contextmanager
    def events(self, timeout: float = 30) -> Iterator[EventStream]:
        """The event stream (GET /api/events), open until the block ends."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        try:
            conn.request("GET", "/api/events", headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            assert response.status == 200, response.read()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            stream = EventStream(response)
            hello = stream.next(lambda m: True, timeout)
            assert hello["event"] == "hello"
            yield stream
        finally:
            conn.close()


class EventStream:
    """Server-Sent Events, parsed: each message's `data` as JSON."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.response = response
        self.seen: list[dict[str, Any]] = []

    def next(self, match: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """The next message `match` accepts (earlier ones are kept in `seen`)."""
        deadline = time.monotonic() + timeout
        data: list[str] = []
        while time.monotonic() < deadline:
            line = self.response.readline().decode()
            if not line:
                raise AssertionError("the event stream ended")
            line = line.rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                message: dict[str, Any] = json.loads("\n".join(data))
                data = []
                self.seen.append(message)
                if match(message):
                    return message
        raise AssertionError(f"no matching event within {timeout:g}s; saw {self.seen}")


def write_token(path: Path, token: str = TOKEN) -> Path:
    path.write_text(token + "\n")
    os.chmod(path, 0o600)
    return path
