"""Unit tests of the dashboard's pieces: tokens and sessions, the origin check, request
parsing, host summaries, event messages and the OpenAPI description (no server, no sshd)."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from fleet.config.inventory import parse_inventory
from fleet.errors import ConfigError
from fleet.events import (
    HostFinished,
    OpFinished,
    OpOutput,
    OpStarted,
    RunFinished,
    RunStarted,
    event_json,
)
from fleet.models import (
    Host,
    HostResult,
    HostStatus,
    MaxFail,
    Mode,
    OpResult,
    OpStatus,
    Run,
    RunOptions,
    RunStatus,
)
from fleet.web.app import STATIC_DIR, WebSettings, create_app
from fleet.web.auth import Authenticator, foreign_origin, load_token
from fleet.web.handlers import parse_run_request
from fleet.web.openapi import openapi
from fleet.web.overview import host_overview, pipeline_overview
from fleet.web.stream import sse

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TOKEN = "unit-test-token-0123456789abcdef"


# -- tokens and sessions ------------------------------------------------------------------------


def test_a_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_token(None, tmp_path / "state")
    assert first.generated and first.path == tmp_path / "state" / "token"
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert len(first.value) >= 40
    second = load_token(None, tmp_path / "state")
    assert (second.value, second.generated) == (first.value, False)
    assert first.value not in repr(WebSettings(tmp_path, tmp_path, first.value))


def test_token_files_are_checked(tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.write_text(f"  {TOKEN}\n")
    assert load_token(given, tmp_path).value == TOKEN
    for bad in ("short", "has a space in the middle of it", "é" * 20, ""):
        given.write_text(bad)
        with pytest.raises(ConfigError, match="token file"):
            load_token(given, tmp_path)
    with pytest.raises(ConfigError, match="cannot read the token file"):
        load_token(tmp_path / "missing", tmp_path)
    generated = tmp_path / "token"
    generated.write_text(TOKEN)
    generated.chmod(0o640)
    with pytest.raises(ConfigError, match=r"may be read by others \(mode 0640\)"):
        load_token(None, tmp_path)


def test_bearer_tokens_and_sessions() -> None:
    now = [1_000_000.0]
    auth = Authenticator(TOKEN, session_seconds=60, clock=lambda: now[0])
    assert auth.check_bearer(f"Bearer {TOKEN}")
    assert auth.check_bearer(f"bearer  {TOKEN} ")
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
        assert not auth.check_bearer(header)
    session = auth.new_session()
    assert TOKEN not in session
    assert auth.check_session(session)
    expires, mac = session.split(".")
    assert not auth.check_session(f"{int(expires) + 1000}.{mac}")  # a longer life: forged
    assert not auth.check_session(session + "0")
    assert not auth.check_session("garbage")
    assert not Authenticator("another-token-0123456789").check_session(session)
    now[0] += 61
    assert not auth.check_session(session)  # expired


def post(headers: dict[str, str]) -> web.Request:
    return make_mocked_request(
        "POST", "/api/runs", headers=CIMultiDict({"Host": "127.0.0.1:8470", **headers})
    )


@pytest.mark.parametrize(
    ("headers", "via", "refused"),
    [
        ({"Origin": "http://127.0.0.1:8470"}, "cookie", False),
        ({"Origin": "https://127.0.0.1:8470"}, "cookie", False),  # behind a TLS proxy
        ({"Referer": "http://127.0.0.1:8470/"}, "cookie", False),
        ({}, "bearer", False),  # a script
        ({"Sec-Fetch-Site": "same-origin"}, "bearer", False),
        ({}, "cookie", True),
        ({}, None, True),
        ({"Sec-Fetch-Site": "cross-site"}, "bearer", True),
        ({"Origin": "http://127.0.0.1:8471"}, "cookie", True),
        ({"Origin": "http://127.0.0.1:8470.evil.example"}, "bearer", True),
        ({"Origin": "http://localhost:8470"}, "cookie", True),
        ({"Origin": "null"}, "bearer", True),
        ({"Origin": "file://"}, "bearer", True),
        ({"Referer": "http://evil.example/x"}, "cookie", True),
    ],
)
def test_the_origin_check(headers: dict[str, str], via: str | None, refused: bool) -> None:
    assert (foreign_origin(post(headers), via) is not None) is refused


# -- requests and summaries ---------------------------------------------------------------------


def test_parse_run_request() -> None:
    assert parse_run_request({"pipeline": "do-all"}) == ("do-all", RunOptions())
    pipeline, options = parse_run_request(
        {
            "pipeline": "merge-deploy",
            "on": ["a", "b"],
            "pr": 12,
            "mode": "streaming",
            "max_parallel": 2,
            "max_fail": "25%",
            "rollback_on_failure": True,
        }
    )
    assert pipeline == "merge-deploy"
    assert options == RunOptions(
        mode=Mode.STREAMING,
        max_parallel=2,
        max_fail=MaxFail(percent=25),
        pr=12,
        rollback_on_failure=True,
        selector="a,b",
    )
    assert parse_run_request({"pipeline": "x", "on": "@eu", "max_fail": 1})[1] == RunOptions(
        selector="@eu", max_fail=MaxFail(count=1)
    )
    bad: Any
    for bad in [
        None,
        [],
        {"pipeline": ""},
        {"pipeline": 1},
        {"pipeline": "x", "on": ""},
        {"pipeline": "x", "on": [1]},
        {"pipeline": "x", "pr": 0},
        {"pipeline": "x", "max_parallel": 1.5},
        {"pipeline": "x", "max_fail": []},
        {"pipeline": "x", "rollback_on_failure": "yes"},
        {"pipeline": "x", "y": 1},
    ]:
        with pytest.raises(ConfigError):
            parse_run_request(bad)


def op(name: str, status: OpStatus, **kw: object) -> OpResult:
    return OpResult(name, status, started_at=T0, **kw)  # type: ignore[arg-type]


def run(run_id: str, status: RunStatus, hosts: dict[str, HostResult]) -> Run:
    return Run(run_id, "do-all", status, started_at=T0, hosts=hosts)


def test_host_overview_takes_the_newest_run_and_the_last_switch() -> None:
    host = Host("web1", address="web1.example", hostname="10.0.0.1", tags=("eu",))
    switched = op(
        "switch",
        OpStatus.SUCCESS,
        switch_like=True,
        system_before="/nix/store/a",
        system_after="/nix/store/b",
    )
    older = run(
        "r1",
        RunStatus.COMPLETE,
        {
            "web1": HostResult(
                "web1", HostStatus.COMPLETE, ops=(op("pull", OpStatus.SUCCESS), switched)
            )
        },
    )
    running = run(
        "r2",
        RunStatus.RUNNING,
        {
            "web1": HostResult(
                "web1",
                HostStatus.RUNNING,
                ops=(op("pull", OpStatus.RUNNING), OpResult("switch", switch_like=True)),
            )
        },
    )
    other = run("r3", RunStatus.FAILED, {"db1": HostResult("db1", HostStatus.FAILED)})
    view = host_overview(host, [other, running, older])
    assert view["name"] == "web1" and view["tags"] == ["eu"]
    assert (view["address"], view["hostname"]) == ("web1.example", "10.0.0.1")
    assert view["last_run"]["run_id"] == "r2"
    assert [(o["op"], o["status"]) for o in view["last_run"]["ops"]] == [
        ("pull", "RUNNING"),
        ("switch", "PENDING"),
    ]
    assert view["current"] == {"run_id": "r2", "op": "pull", "started_at": "2026-01-02T03:04:05Z"}
    assert view["system"]["run_id"] == "r1"
    assert (view["system"]["before"], view["system"]["after"]) == ("/nix/store/a", "/nix/store/b")
    assert view["system"]["changed"] is True
    assert host_overview(host, [other])["last_run"] is None
    assert host_overview(host, [older])["current"] is None


def test_pipeline_overview_says_which_need_a_pr() -> None:
    inventory = parse_inventory(
        '[hosts.a]\naddress = "a"\n[ops.hello]\ncommand = "echo hi"\nscope = "controller"\n'
        '[pipelines.greet]\nops = ["hello", "pull"]\ndescription = "Say hi"\n'
    )
    pipelines = {p["id"]: p for p in pipeline_overview(inventory)}
    assert pipelines["greet"] == {
        "id": "greet",
        "ops": ["hello", "pull"],
        "host_ops": ["pull"],
        "description": "Say hi",
        "builtin": False,
        "needs_pr": False,
    }
    assert pipelines["merge-deploy"]["needs_pr"] is True
    assert pipelines["do-all"]["needs_pr"] is False


# -- the stream and the description -------------------------------------------------------------


def test_event_messages() -> None:
    result = op("pull", OpStatus.SUCCESS, exit_code=0)
    the_run = run("r1", RunStatus.PARTIAL, {"a": HostResult("a", HostStatus.COMPLETE)})
    assert event_json(RunStarted(the_run), full=True) == {
        "event": "run_started",
        "run": the_run.to_json(),
    }
    assert event_json(OpStarted("r1", "a", "pull", T0, 2), full=True) == {
        "event": "op_started",
        "run_id": "r1",
        "host": "a",
        "op": "pull",
        "attempt": 2,
        "started_at": "2026-01-02T03:04:05Z",
    }
    assert event_json(OpFinished("r1", None, result), full=True) == {
        "event": "op_finished",
        "run_id": "r1",
        "host": None,
        "result": result.to_json(),
    }
    finished = HostResult("a", HostStatus.FAILED, "switch")
    assert event_json(HostFinished("r1", finished), full=True) == {
        "event": "host_finished",
        "run_id": "r1",
        "host": "a",
        "result": finished.to_json(),
    }
    assert event_json(RunFinished(the_run), full=True) == {
        "event": "run_finished",
        "run": the_run.to_json(),
    }
    assert event_json(OpOutput("r1", "a", "pull", b"secret output"), full=True) is None
    data = sse({"event": "hello"})
    assert data.startswith(b"data: ") and data.endswith(b"\n\n")
    assert json.loads(data[6:]) == {"event": "hello"}


def test_openapi_covers_the_app_routes(tmp_path: Path) -> None:
    app = create_app(WebSettings(tmp_path / "fleet.toml", tmp_path, TOKEN))
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith(("/api", "/healthz"))
    }
    documented = {(m, p) for p, ops in openapi()["paths"].items() for m in ops}
    assert {(m, p) for m, p in routes if m != "head"} == documented


def test_the_page_is_plain_files_without_inline_script() -> None:
    names = sorted(p.name for p in STATIC_DIR.iterdir())
    assert names == ["app.js", "index.html", "login.html", "login.js", "style.css"]
    for page in ("index.html", "login.html"):
        html = (STATIC_DIR / page).read_text()
        assert "<script>" not in html and "style=" not in html and " on" + "click=" not in html
        assert '<meta name="viewport"' in html
    assert "prefers-color-scheme: dark" in (STATIC_DIR / "style.css").read_text()
    assert "innerHTML" not in (STATIC_DIR / "app.js").read_text()
