"""Who may use the dashboard: the token, the session cookie, same-origin writes, no leaks."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import time
from http.cookies import SimpleCookie

import pytest

from tests.integration.harness import TestFleet
from tests.web.server import TOKEN, DashboardServer, write_token

pytestmark = pytest.mark.sshd

GUARDED_GETS = [
    "/api/hosts",
    "/api/pipelines",
    "/api/runs",
    "/api/runs/x",
    "/api/runs/x/logs",
    "/api/events",
    "/api/openapi.json",
]


def login(dashboard: DashboardServer, token: str = TOKEN) -> tuple[int, str, str | None]:
    """POST /login as the login form does: (status, Location, session cookie or None)."""
    answer = dashboard.request(
        "POST",
        "/login",
        auth=False,
        data=f"token={token}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": dashboard.origin},
    )
    cookie = answer.headers.get("Set-Cookie")
    session = SimpleCookie(cookie)["fleet_session"].value if cookie else None
    return answer.status, answer.headers["Location"], session


def test_without_the_token_only_healthz_and_the_login_page_answer(
    dashboard: DashboardServer,
) -> None:
    for path in GUARDED_GETS:
        answer = dashboard.get(path, auth=False)
        assert answer.status == 401, path
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="fleet"'
        assert dashboard.get(path, auth="wrong-" + TOKEN).status == 401, path
    for page in ("/", "/static/app.js"):
        answer = dashboard.get(page, auth=False)
        assert (answer.status, answer.headers["Location"]) == (303, "/login")
    refused = dashboard.post(
        "/api/runs", {"pipeline": "do-all"}, auth=False, headers={"Origin": dashboard.origin}
    )
    assert refused.status == 401
    assert dashboard.get("/healthz", auth=False).json()["status"] == "ok"
    login_page = dashboard.get("/login", auth=False)
    assert login_page.status == 200 and 'name="token"' in login_page.text
    assert dashboard.get("/static/login.js", auth=False).status == 200
    assert dashboard.get("/static/style.css", auth=False).status == 200
    assert dashboard.get("/api/runs").json() == []


def test_login_sets_a_strict_httponly_session_cookie(dashboard: DashboardServer) -> None:
    assert login(dashboard, "not-the-" + TOKEN) == (303, "/login?failed=1", None)
    status, location, session = login(dashboard)
    assert (status, location) == (303, "/")
    assert session is not None and TOKEN not in session
    answer = dashboard.request(
        "POST",
        "/login",
        auth=False,
        data=f"token={TOKEN}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": dashboard.origin},
    )
    attributes = answer.headers["Set-Cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "path=/", "max-age="):
        assert attribute in attributes
    cookie = {"Cookie": f"fleet_session={session}"}
    assert dashboard.get("/api/hosts", auth=False, headers=cookie).status == 200
    page = dashboard.get("/", auth=False, headers=cookie)
    assert page.status == 200 and "Do All" in page.text and TOKEN not in page.text
    tampered = {"Cookie": f"fleet_session={session[:-1]}{'0' if session[-1] != '0' else '1'}"}
    assert dashboard.get("/api/hosts", auth=False, headers=tampered).status == 401
    forged = {"Cookie": "fleet_session=99999999999.00"}
    assert dashboard.get("/api/hosts", auth=False, headers=forged).status == 401
    logout = dashboard.request(
        "POST", "/logout", auth=False, headers={**cookie, "Origin": dashboard.origin}
    )
    assert logout.status == 303
    assert 'fleet_session=""' in logout.headers["Set-Cookie"]
    expired = dashboard.request("POST", "/logout", auth=False, headers={"Origin": dashboard.origin})
    assert (expired.status, expired.headers["Location"]) == (303, "/login")


def test_writes_from_another_origin_are_refused(dashboard: DashboardServer) -> None:
    _, _, session = login(dashboard)
    cookie = f"fleet_session={session}"
    evil = "http://evil.example"
    cases = [
        {"Origin": evil},  # bearer token, foreign origin
        {"Origin": "null"},
        {"Origin": dashboard.origin.replace("127.0.0.1", "localhost")},
        {"Referer": evil + "/page"},
        {"Authorization": "", "Cookie": cookie, "Origin": evil},
        {"Authorization": "", "Cookie": cookie},  # a cookie, and no origin at all
        {"Authorization": "", "Cookie": cookie, "Sec-Fetch-Site": "cross-site"},
    ]
    for headers in cases:
        answer = dashboard.post("/api/runs", {"pipeline": "do-all"}, headers=headers)
        assert answer.status == 403, headers
        assert "refused" in answer.json()["error"]
        assert dashboard.post("/api/runs/x/cancel", headers=headers).status == 403, headers
    foreign_login = dashboard.request(
        "POST",
        "/login",
        auth=False,
        data=f"token={TOKEN}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": evil},
    )
    assert foreign_login.status == 403 and "Set-Cookie" not in foreign_login.headers
    assert dashboard.get("/api/runs").json() == []
    # the same requests from the dashboard's own page (or a script with the token) go through
    own = {"Authorization": "", "Cookie": cookie, "Origin": dashboard.origin}
    assert dashboard.post("/api/runs", {"pipeline": "nope"}, headers=own).status == 400
    assert dashboard.post("/api/runs", {"pipeline": "nope"}, headers={}).status == 400
    referer = {"Authorization": "", "Cookie": cookie, "Referer": dashboard.url}
    assert dashboard.post("/api/runs", {"pipeline": "nope"}, headers=referer).status == 400


def test_responses_carry_security_headers(dashboard: DashboardServer) -> None:
    for path in ("/", "/api/hosts", "/login"):
        headers = dashboard.get(path).headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["Cache-Control"] == "no-store"


def test_a_generated_token_is_private_and_never_leaks(fleet3: TestFleet) -> None:
    server = DashboardServer(fleet3, token_file=None).start()
    try:
        token_file = fleet3.state_dir / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = server.token
        assert len(token) >= 40
        assert f"generated a new token in {token_file}" in server.stderr()
        assert f"the token is in {token_file}" in server.stderr()
        assert server.get("/api/hosts").status == 200
        fleet3.break_host("host2")
        run_id = server.start_run("do-all")
        assert server.wait_run(run_id)["status"] == "PARTIAL"
        pages = [
            "/",
            "/api/hosts",
            f"/api/runs/{run_id}",
            "/api/runs",
            "/api/pipelines",
            f"/api/runs/{run_id}/logs",
            "/api/openapi.json",
            "/static/app.js",
        ]
        for page in pages:
            assert token not in server.get(page).text, page
    finally:
        assert server.stop() == 0
    assert token not in server.stderr()
    for path in fleet3.state_dir.rglob("*"):
        if path.is_file() and path != token_file:
            assert token.encode() not in path.read_bytes(), path
    again = DashboardServer(fleet3, token_file=None).start()
    try:
        assert again.token == token
        assert "generated a new token" not in again.stderr()
    finally:
        again.stop()


def test_a_token_file_readable_by_others_or_too_short_is_refused(fleet3: TestFleet) -> None:
    fleet3.state_dir.mkdir(exist_ok=True)
    generated = fleet3.state_dir / "token"
    generated.write_text(TOKEN)
    generated.chmod(0o644)
    proc = fleet3.run_cli(["serve", "--listen", "127.0.0.1:0"], timeout=30)
    assert proc.returncode == 2
    assert f"token file {generated} may be read by others (mode 0644)" in proc.stderr
    short = fleet3.root / "short-token"
    short.write_text("abc\n")
    proc = fleet3.run_cli(["serve", "--listen", "127.0.0.1:0", "--token-file", str(short)])
    assert proc.returncode == 2
    assert "at least 16 printable ASCII characters" in proc.stderr
    proc = fleet3.run_cli(["serve", "--listen", "nope"])
    assert proc.returncode == 2 and "--listen: expected HOST:PORT" in proc.stderr


def test_on_a_terminal_it_prints_a_login_link(fleet3: TestFleet) -> None:
    token_file = write_token(fleet3.root / "token")
    argv = fleet3.cli_argv(["serve", "--listen", "127.0.0.1:0", "--token-file", str(token_file)])
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        argv,
        env=fleet3.cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.DEVNULL,
    )
    os.close(terminal)
    shown = b""
    try:
        deadline = time.monotonic() + 20
        while b"\n" not in shown and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                shown += os.read(controller, 4096)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        os.close(controller)
    line = shown.decode().strip()
    assert line.startswith("Open the dashboard: http://127.0.0.1:")
    assert line.endswith(f"/login#token={TOKEN}")
