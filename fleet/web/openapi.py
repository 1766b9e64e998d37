"""The OpenAPI 3.1 description of the dashboard's API, served at GET /api/openapi.json."""

from __future__ import annotations

from typing import Any

from fleet import __version__
from fleet.models import HostStatus, OpStatus, RunStatus

_STATUS = {"type": "string", "enum": [s.value for s in RunStatus]}
_OP_STATUS = {"type": "string", "enum": [s.value for s in OpStatus]}
_HOST_STATUS = {"type": "string", "enum": [s.value for s in HostStatus]}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_STR_OR_NULL = {"type": ["string", "null"]}
# The fields a run and its summary share.
_RUN_FIELDS: dict[str, Any] = {
    "run_id": {"type": "string"},
    "pipeline": {"type": "string"},
    "status": _STATUS,
    "started_at": _TIME,
    "finished_at": _TIME,
    "retry_of": _STR_OR_NULL,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _query(name: str, kind: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": kind}, "description": description}


_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "description": "A run id, or a prefix that matches one run.",
    "schema": {"type": "string"},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {"error": {"type": "string", "description": "One line saying what."}},
        "required": ["error"],
    },
    "OpResult": {
        "type": "object",
        "properties": {
            "op": {"type": "string"},
            "status": _OP_STATUS,
            "exit_code": {"type": ["integer", "null"]},
            "started_at": _TIME,
            "finished_at": _TIME,
            "error": _STR_OR_NULL,
            "log": _STR_OR_NULL,
            "attempts": {"type": "integer"},
            "system_before": {**_STR_OR_NULL, "description": "Switch-like ops only."},
            "system_after": {**_STR_OR_NULL, "description": "Switch-like ops only."},
        },
    },
    "HostResult": {
        "type": "object",
        "properties": {
            "status": _HOST_STATUS,
            "failed_op": _STR_OR_NULL,
            "rolled_back": {"type": "boolean"},
            "ops": {"type": "array", "items": _ref("OpResult")},
        },
    },
    "Run": {
        "type": "object",
        "description": "The same object as `fleet status --json`.",
        "properties": {
            **_RUN_FIELDS,
            "options": {"type": "object"},
            "controller": {
                "type": "object",
                "properties": {"ops": {"type": "array", "items": _ref("OpResult")}},
            },
            "hosts": {"type": "object", "additionalProperties": _ref("HostResult")},
        },
    },
    "RunSummary": {
        "type": "object",
        "description": "As `fleet history --json`, plus whether this service can cancel it.",
        "properties": {
            **_RUN_FIELDS,
            "hosts_total": {"type": "integer"},
            "hosts_ok": {"type": "integer"},
            "hosts_failed": {"type": "integer"},
            "cancellable": {"type": "boolean"},
        },
    },
    "Host": {
        "type": "object",
        "description": "The host as `fleet hosts --json` shows it (repo, branch, sudo, ... too), "
        "with its last run, current op and system.",
        "properties": {
            "name": {"type": "string"},
            "address": {"type": "string"},
            "hostname": {"type": "string"},
            "port": {"type": "integer"},
            "user": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "last_run": {
                "type": ["object", "null"],
                "description": "The newest run that included the host, with its ops.",
            },
            "current": {
                "type": ["object", "null"],
                "description": "{run_id, op, started_at} while the host runs an op.",
            },
            "system": {
                "type": ["object", "null"],
                "description": "{before, after, changed, op, status, run_id, finished_at} of "
                "the last switch.",
            },
        },
    },
    "Pipeline": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "ops": {"type": "array", "items": {"type": "string"}},
            "host_ops": {"type": "array", "items": {"type": "string"}},
            "description": {"type": "string"},
            "builtin": {"type": "boolean"},
            "needs_pr": {"type": "boolean"},
        },
    },
    "RunRequest": {
        "type": "object",
        "required": ["pipeline"],
        "additionalProperties": False,
        "properties": {
            "pipeline": {"type": "string", "examples": ["do-all"]},
            "on": {
                "oneOf": [
                    {"type": "string", "description": "Names, globs and @tags, comma-separated."},
                    {"type": "array", "items": {"type": "string"}},
                    {"type": "null"},
                ],
                "description": "The hosts (default: all).",
            },
            "pr": {"type": ["integer", "null"], "minimum": 1, "description": "merge-deploy."},
            "mode": {"type": "string", "enum": ["lockstep", "streaming"]},
            "max_parallel": {"type": ["integer", "null"], "minimum": 1},
            "max_fail": {"type": ["string", "integer", "null"], "examples": ["1", "25%"]},
            "rollback_on_failure": {"type": "boolean"},
        },
    },
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


PATHS: dict[str, Any] = {
    "/api/hosts": {
        "get": _op(
            "The hosts of fleet.toml with their last run, current op and last switch.",
            {"200": _json({"type": "array", "items": _ref("Host")}, "The hosts, in file order.")},
        )
    },
    "/api/pipelines": {
        "get": _op(
            "The pipelines (built-in and from fleet.toml).",
            {"200": _json({"type": "array", "items": _ref("Pipeline")}, "The pipelines.")},
        )
    },
    "/api/runs": {
        "get": _op(
            "Recent runs, newest first.",
            {"200": _json({"type": "array", "items": _ref("RunSummary")}, "The runs.")},
            parameters=[_query("limit", "integer", "How many (default 50, at most 500).")],
        ),
        "post": _op(
            "Start a pipeline; answers once the run is recorded.",
            {
                "202": _json(
                    {
                        "type": "object",
                        "properties": {
                            "run_id": {"type": "string"},
                            "status": {"const": "RUNNING"},
                            "url": {"type": "string"},
                        },
                    },
                    "The run started.",
                ),
                "400": _error("Unknown pipeline, no matching host, missing pr, bad field."),
                "403": _error("Cross-origin request."),
                "409": _error("A chosen host is in a running run."),
                "415": _error("The body is not JSON."),
            },
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": _ref("RunRequest")}},
            },
        ),
    },
    "/api/runs/{run_id}": {
        "get": _op(
            "One run, as `fleet status --json`.",
            {"200": _json(_ref("Run"), "The run."), "404": _error("No such run.")},
            parameters=[_RUN_ID],
        )
    },
    "/api/runs/{run_id}/cancel": {
        "post": _op(
            "Cancel a run this service started; its status becomes CANCELLED.",
            {
                "202": _json({"type": "object"}, "Cancelling."),
                "404": _error("No such run."),
                "409": _error(
                    "The run is finished, has stopped (its end is recorded as soon as the state "
                    "store can be written), or another fleet process drives it."
                ),
            },
            parameters=[_RUN_ID],
        )
    },
    "/api/runs/{run_id}/logs": {
        "get": _op(
            "Op output: one op's log when host and op are given, else each matching op's log "
            "under a `==> host op <==` header. The header X-Log-Size gives the whole size.",
            {
                "200": {
                    "description": "The output, as the host sent it.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "404": _error("No such run, host or op."),
            },
            parameters=[
                _RUN_ID,
                _query("host", "string", "A host, or `controller` for controller ops."),
                _query("op", "string", "An op."),
                _query("last", "integer", "Only the last N bytes of each log."),
            ],
        )
    },
    "/api/events": {
        "get": _op(
            "The live stream (Server-Sent Events): one JSON object per message, its `event` "
            "one of hello, run_started, op_started, op_finished, op_slow, op_note, "
            "host_finished, run_finished, run_updated (a run of another fleet process), resync.",
            {"200": {"description": "The stream.", "content": {"text/event-stream": {}}}},
        )
    },
    "/api/openapi.json": {"get": _op("This description.", {"200": {"description": "OpenAPI."}})},
    "/healthz": {
        "get": _op(
            "Liveness; the only endpoint that needs no token.",
            {"200": _json({"type": "object"}, "The service answers.")},
            security=[],
        )
    },
}


def openapi() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fleet dashboard API",
            "version": __version__,
            "description": "Every endpoint but /healthz needs the token: `Authorization: "
            "Bearer <token>`, or the session cookie set by POST /login. Requests that change "
            "anything must come from the dashboard's own origin.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "fleet_session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": PATHS,
    }
