"""The JSON API: thin handlers that parse a request, call fleet's library and answer JSON.

Errors are JSON objects `{"error": "one line"}` with the status that fits: 400 for a bad
request (unknown pipeline, selector matching no host, missing --pr), 404 for an unknown run,
409 for a run that cannot be cancelled or hosts that are busy, 415 for a body that is not JSON.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from fleet.errors import ConfigError, Conflict, FleetError, HostSelectionError, StateError
from fleet.models import CONTROLLER, Mode, Run, RunOptions, is_valid_name, iso, utcnow
from fleet.web.overview import HISTORY_FOR_HOSTS, host_overview, pipeline_overview
from fleet.web.runs import RunManager

MANAGER = web.AppKey("manager", RunManager)
MAX_RUNS = 500
RUN_FIELDS = {"pipeline", "on", "pr", "mode", "max_parallel", "max_fail", "rollback_on_failure"}


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _manager(request: web.Request) -> RunManager:
    return request.app[MANAGER]


def _run(request: web.Request) -> Run:
    store = _manager(request).store
    try:
        return store.get_run(store.resolve_run_id(request.match_info["run_id"]))
    except StateError as exc:
        raise web.HTTPNotFound(
            text=json.dumps({"error": str(exc)}), content_type="application/json"
        ) from None


# -- inventory ----------------------------------------------------------------------------------


async def get_hosts(request: web.Request) -> web.Response:
    manager = _manager(request)
    inventory = manager.config.inventory()
    runs = manager.store.list_runs(HISTORY_FOR_HOSTS)
    return web.json_response([host_overview(h, runs) for h in inventory.hosts.values()])


async def get_pipelines(request: web.Request) -> web.Response:
    return web.json_response(pipeline_overview(_manager(request).config.inventory()))


# -- runs ---------------------------------------------------------------------------------------


def parse_run_request(body: Any) -> tuple[str, RunOptions]:
    """The pipeline and options of a POST /api/runs body; ConfigError says what is wrong."""
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object")
    unknown = sorted(set(body) - RUN_FIELDS)
    if unknown:
        raise ConfigError(f"unknown field(s): {', '.join(unknown)}")
    pipeline = body.get("pipeline")
    if not isinstance(pipeline, str) or not pipeline:
        raise ConfigError('"pipeline" must be a pipeline id (see GET /api/pipelines)')
    on = body.get("on")
    if isinstance(on, list) and on and all(isinstance(h, str) for h in on):
        on = ",".join(on)
    if on is not None and (not isinstance(on, str) or not on.strip()):
        raise ConfigError('"on" must be a host selector string or a list of host names')
    pr = _optional_int(body, "pr")
    max_parallel = _optional_int(body, "max_parallel")
    max_fail = body.get("max_fail")
    if max_fail is not None and not isinstance(max_fail, str | int):
        raise ConfigError('"max_fail" must be N or "P%"')
    mode = body.get("mode", Mode.LOCKSTEP.value)
    if mode not in {m.value for m in Mode}:
        raise ConfigError(f'"mode" must be one of: {", ".join(m.value for m in Mode)}')
    rollback = body.get("rollback_on_failure", False)
    if not isinstance(rollback, bool):
        raise ConfigError('"rollback_on_failure" must be true or false')
    options = RunOptions.parse(
        mode=mode,
        max_parallel=max_parallel,
        max_fail=max_fail,
        rollback_on_failure=rollback,
        pr=pr,
        selector=on,
    )
    return pipeline, options


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f'"{key}" must be a positive integer')
    return value


async def post_run(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return error(415, "send the run as JSON (Content-Type: application/json)")
    try:
        body = await request.json()
    except ValueError:
        return error(400, "the body is not valid JSON")
    try:
        pipeline, options = parse_run_request(body)
        run_id = await _manager(request).start(pipeline, options)
    except Conflict as exc:
        return error(409, str(exc))
    except (ConfigError, HostSelectionError) as exc:
        return error(400, str(exc))
    url = f"/api/runs/{run_id}"
    return web.json_response(
        {"run_id": run_id, "status": "RUNNING", "url": url}, status=202, headers={"Location": url}
    )


async def list_runs(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        return error(400, "limit must be a number")
    manager = _manager(request)
    runs = manager.store.list_runs(max(1, min(limit, MAX_RUNS)))
    return web.json_response(
        [{**r.summary_json(), "cancellable": manager.cancellable(r.run_id, r.status)} for r in runs]
    )


async def get_run(request: web.Request) -> web.Response:
    return web.json_response(_run(request).to_json())


async def cancel_run(request: web.Request) -> web.Response:
    run = _run(request)
    try:
        _manager(request).cancel(run.run_id)
    except Conflict as exc:
        return error(409, str(exc))
    return web.json_response({"run_id": run.run_id, "cancelling": True}, status=202)


# -- logs ---------------------------------------------------------------------------------------


async def get_logs(request: web.Request) -> web.StreamResponse:
    """One op's log (host and op given), else every matching op's log, each under a header.
    `last=N` gives only the last N bytes of each (the page's tail)."""
    run = _run(request)
    store = _manager(request).store
    host = request.query.get("host") or None
    op = request.query.get("op") or None
    try:
        last = int(request.query["last"]) if "last" in request.query else None
    except ValueError:
        return error(400, "last must be a number of bytes")
    for kind, name in (("host", host), ("op", op)):
        if name is not None and not is_valid_name(name):
            return error(400, f"invalid {kind} name")
    try:
        keys = list(run.log_keys(host, op))
        if host is not None and op is not None:
            (who, op_id) = keys[0]
            path = store.log_path(run.run_id, who, op_id)
            size = path.stat().st_size if path.exists() else 0
            if last is None and size:
                return web.FileResponse(path, headers=_text_headers(size))
            body = store.read_log(run.run_id, who, op_id, last=last)
            return web.Response(body=body, headers=_text_headers(size))
        parts: list[bytes] = []
        for who, op_id in keys:
            data = store.read_log(run.run_id, who, op_id, last=last)
            if data:
                parts.append(f"==> {who or CONTROLLER} {op_id} <==\n".encode())
                parts.append(data if data.endswith(b"\n") else data + b"\n")
    except (ConfigError, StateError) as exc:  # no such host or op in the run: not found
        return error(404, str(exc))
    return web.Response(body=b"".join(parts), headers=_text_headers(None))


def _text_headers(size: int | None) -> dict[str, str]:
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if size is not None:
        headers["X-Log-Size"] = str(size)
    return headers


# -- service ------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "time": iso(utcnow())})


def fleet_error(exc: FleetError) -> web.Response:
    """A FleetError no handler expected (fleet.toml became invalid, the store failed)."""
    return error(500, str(exc))
