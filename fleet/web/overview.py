"""What the dashboard shows per host and per pipeline, computed from the inventory and the runs.

Pure functions over models (no I/O), so that the API's answers are easy to test.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fleet.config.inventory import Inventory
from fleet.models import Host, OpResult, OpStatus, Run, RunStatus, Scope, iso

HISTORY_FOR_HOSTS = 100  # how many recent runs are searched for each host's last run


def host_overview(host: Host, runs: Sequence[Run]) -> dict[str, Any]:
    """A host's row: who it is, its last run (ops and status), the op it is running now and
    the system path before and after its last switch. `runs` is newest first."""
    last = next((r for r in runs if host.name in r.hosts), None)
    return {
        **host.to_json(),  # the one JSON form of a host, as `fleet hosts --json` shows it
        "last_run": _last_run(host.name, last) if last else None,
        "current": _current(host.name, last) if last else None,
        "system": _last_switch(host.name, runs),
    }


def _op_brief(op: OpResult) -> dict[str, Any]:
    return {
        "op": op.op,
        "status": op.status.value,
        "started_at": iso(op.started_at),
        "finished_at": iso(op.finished_at),
        "error": op.error,
    }


def _last_run(name: str, run: Run) -> dict[str, Any]:
    host = run.hosts[name]
    return {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "run_status": run.status.value,
        "status": host.status.value,
        "failed_op": host.failed_op,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "ops": [_op_brief(op) for op in host.ops],
    }


def _current(name: str, run: Run) -> dict[str, Any] | None:
    if run.status is not RunStatus.RUNNING:
        return None
    for op in run.hosts[name].ops:
        if op.status is OpStatus.RUNNING:
            return {"run_id": run.run_id, "op": op.op, "started_at": iso(op.started_at)}
    return None


def _last_switch(name: str, runs: Iterable[Run]) -> dict[str, Any] | None:
    """The newest switch-like op of `name` that recorded the system before and after."""
    for run in runs:
        host = run.hosts.get(name)
        if host is None:
            continue
        for op in reversed(host.ops):
            if op.switch_like and (op.system_before or op.system_after):
                return {
                    "before": op.system_before,
                    "after": op.system_after,
                    "changed": op.system_before != op.system_after,
                    "op": op.op,
                    "status": op.status.value,
                    "run_id": run.run_id,
                    "finished_at": iso(op.finished_at),
                }
    return None


def pipeline_overview(inventory: Inventory) -> list[dict[str, Any]]:
    """Every pipeline with its ops, which of them run on hosts, and whether it needs a PR."""
    out = []
    for pipeline in inventory.pipelines:
        ops = [inventory.ops.get(op_id) for op_id in pipeline.ops]
        out.append(
            {
                "id": pipeline.id,
                "ops": list(pipeline.ops),
                "host_ops": [op.id for op in ops if op.scope is Scope.HOST],
                "description": pipeline.description,
                "builtin": pipeline.builtin,
                "needs_pr": any(op.id == "merge-pr" and op.builtin for op in ops),
            }
        )
    return out
