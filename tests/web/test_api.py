"""The dashboard's JSON API and event stream, against real sshd hosts (fleet serve in a process)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.web.server import DashboardServer, EventStream

pytestmark = pytest.mark.sshd


def ops_of(run: dict[str, Any], host: str) -> dict[str, str]:
    return {o["op"]: o["status"] for o in run["hosts"][host]["ops"]}


def is_event(kind: str, **fields: Any) -> Any:
    return lambda m: m["event"] == kind and all(m.get(k) == v for k, v in fields.items())


def op_event(kind: str, host: str, op: str) -> Any:
    def match(m: dict[str, Any]) -> bool:
        if m["event"] != kind or m["host"] != host:
            return False
        name: str = m["result"]["op"] if kind == "op_finished" else m["op"]
        return name == op

    return match


# ---------------------------------------------------------------------------------------------
# Inventory


def test_hosts_and_pipelines(dashboard: DashboardServer) -> None:
    hosts = dashboard.get("/api/hosts").json()
    assert [h["name"] for h in hosts] == ["host1", "host2", "host3"]
    for host in hosts:
        sshd = dashboard.fleet[host["name"]]
        assert (host["address"], host["port"], host["user"]) == (sshd.address, sshd.port, "root")
        assert host["last_run"] is None and host["current"] is None and host["system"] is None
    pipelines = {p["id"]: p for p in dashboard.get("/api/pipelines").json()}
    assert pipelines["do-all"]["ops"] == ["pull", "switch", "test"]
    assert pipelines["do-all"]["needs_pr"] is False
    assert pipelines["merge-deploy"]["needs_pr"] is True
    assert pipelines["merge-deploy"]["host_ops"] == ["pull", "switch", "test"]
    assert {"update-agent", "force-update"} <= set(pipelines)


# ---------------------------------------------------------------------------------------------
# A run, live


def test_do_all_goes_live_through_pull_switch_test_and_ends_partial(
    dashboard: DashboardServer,
) -> None:
    fleet = dashboard.fleet
    fleet.break_host("host2")
    fleet["host1"].stub.block_switch()
    with dashboard.events() as events:
        run_id = dashboard.start_run("do-all")
        started = events.next(is_event("run_started"))
        assert started["run"]["run_id"] == run_id
        assert ops_of(started["run"], "host1") == {
            "pull": "PENDING",
            "switch": "PENDING",
            "test": "PENDING",
        }
        events.next(op_event("op_finished", "host1", "pull"))
        events.next(op_event("op_started", "host1", "switch"))
        # host1's switch waits on the FIFO: the record says so while the run goes on
        fleet["host1"].stub.wait_switch_blocked()
        failed = events.next(op_event("op_finished", "host2", "switch"))
        assert failed["result"]["status"] == "FAILED"
        assert "assertion failed" in failed["result"]["error"]
        skipped = events.next(op_event("op_finished", "host2", "test"))
        assert skipped["result"]["status"] == "SKIPPED"
        host2 = events.next(is_event("host_finished", host="host2"))
        assert (host2["result"]["status"], host2["result"]["failed_op"]) == ("FAILED", "switch")
        live = dashboard.run(run_id)
        assert live["status"] == "RUNNING"
        assert ops_of(live, "host1") == {"pull": "SUCCESS", "switch": "RUNNING", "test": "PENDING"}
        hosts = {h["name"]: h for h in dashboard.get("/api/hosts").json()}
        assert hosts["host1"]["current"]["op"] == "switch"
        assert hosts["host1"]["current"]["run_id"] == run_id
        fleet["host1"].stub.release_switch()
        events.next(op_event("op_started", "host1", "test"))
        finished = events.next(is_event("run_finished"))
    assert finished["run"]["status"] == "PARTIAL"
    run = dashboard.run(run_id)
    assert run == finished["run"]
    assert ops_of(run, "host2") == {"pull": "SUCCESS", "switch": "FAILED", "test": "SKIPPED"}
    assert (
        ops_of(run, "host1")
        == ops_of(run, "host3")
        == {op: "SUCCESS" for op in ("pull", "switch", "test")}
    )
    # the same object as `fleet status --json`
    status = fleet.run_cli(["status", "--json", run_id])  # exits with the run's code: 3, PARTIAL
    assert status.returncode == 3, status.stderr
    assert json.loads(status.stdout) == run


def test_hosts_show_the_last_run_and_the_last_switch(dashboard: DashboardServer) -> None:
    fleet = dashboard.fleet
    fleet.break_host("host2")
    run_id = dashboard.start_run("do-all")
    assert dashboard.wait_run(run_id)["status"] == "PARTIAL"
    hosts = {h["name"]: h for h in dashboard.get("/api/hosts").json()}
    host1, host2 = hosts["host1"], hosts["host2"]
    assert host1["last_run"]["run_id"] == run_id
    assert (host1["last_run"]["status"], host1["last_run"]["run_status"]) == ("COMPLETE", "PARTIAL")
    assert host1["system"]["before"] == str(fleet["host1"].stub.path / "generations" / "1")
    assert host1["system"]["after"] == str(fleet["host1"].stub.current_system)
    assert host1["system"]["changed"] is True
    assert host2["last_run"]["failed_op"] == "switch"
    assert [(o["op"], o["status"]) for o in host2["last_run"]["ops"]] == [
        ("pull", "SUCCESS"),
        ("switch", "FAILED"),
        ("test", "SKIPPED"),
    ]
    assert host2["system"]["changed"] is False
    history = dashboard.get("/api/runs").json()
    assert [(r["run_id"], r["status"], r["hosts_ok"], r["hosts_total"]) for r in history] == [
        (run_id, "PARTIAL", 2, 3)
    ]
    assert history[0]["cancellable"] is False


def test_logs_whole_tail_and_all(dashboard: DashboardServer) -> None:
    dashboard.fleet.break_host("host2")
    run_id = dashboard.wait_run(dashboard.start_run("do-all"))["run_id"]
    whole = dashboard.get(f"/api/runs/{run_id}/logs?host=host2&op=switch")
    assert whole.status == 200
    assert whole.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "assertion failed" in whole.text
    assert int(whole.headers["X-Log-Size"]) == len(whole.body)
    tail = dashboard.get(f"/api/runs/{run_id}/logs?host=host2&op=switch&last=40")
    assert tail.body == whole.body[-40:]
    assert tail.headers["X-Log-Size"] == whole.headers["X-Log-Size"]
    every = dashboard.get(f"/api/runs/{run_id}/logs").text
    for host in ("host1", "host2", "host3"):
        assert f"==> {host} pull <==" in every
    assert "==> host2 test <==" not in every  # skipped: no output
    one_host = dashboard.get(f"/api/runs/{run_id}/logs?host=host1").text
    assert "==> host1 switch <==" in one_host and "==> host2" not in one_host
    missing = dashboard.get(f"/api/runs/{run_id}/logs?host=nosuch&op=switch")
    assert missing.status == 404
    assert dashboard.get(f"/api/runs/{run_id}/logs?host=../x&op=switch").status == 400


# ---------------------------------------------------------------------------------------------
# Cancel, busy hosts, other processes


def test_cancel_a_run_started_here(dashboard: DashboardServer) -> None:
    fleet = dashboard.fleet
    fleet["host1"].stub.block_switch()
    run_id = dashboard.start_run("do-all", on=["host1"])
    fleet["host1"].stub.wait_switch_blocked()
    assert dashboard.get("/api/runs").json()[0]["cancellable"] is True
    answer = dashboard.post(f"/api/runs/{run_id}/cancel")
    assert answer.status == 202, answer.text
    run = dashboard.wait_run(run_id)
    assert run["status"] == "CANCELLED"
    assert list(run["hosts"]) == ["host1"]
    assert ops_of(run, "host1") == {"pull": "SUCCESS", "switch": "CANCELLED", "test": "CANCELLED"}
    again = dashboard.post(f"/api/runs/{run_id}/cancel")
    assert again.status == 409
    assert "CANCELLED" in again.json()["error"]
    assert dashboard.post("/api/runs/nosuch/cancel").status == 404


def test_a_busy_host_is_refused_here_and_held_against_the_cli(dashboard: DashboardServer) -> None:
    fleet = dashboard.fleet
    fleet["host1"].stub.block_switch()
    run_id = dashboard.start_run("do-all", on="host1")
    fleet["host1"].stub.wait_switch_blocked()
    busy = dashboard.post("/api/runs", {"pipeline": "do-all", "on": ["host1", "host2"]})
    assert busy.status == 409
    assert f"host1 (run {run_id})" in busy.json()["error"]
    cli = fleet.run_cli(["do-all", "--on", "host1", "--json"])
    assert cli.returncode == 1, cli.stderr
    assert json.loads(cli.stdout)["hosts"]["host1"]["ops"][0]["error"] == (
        f"host is held by run {run_id}"
    )
    fleet["host1"].stub.release_switch()
    assert dashboard.wait_run(run_id)["status"] == "COMPLETE"


def test_a_cli_run_is_streamed_and_cancelled_from_here(dashboard: DashboardServer) -> None:
    fleet = dashboard.fleet
    fleet["host3"].stub.block_switch()
    with dashboard.events() as events:
        cli = fleet.spawn_cli(["do-all", "--on", "host3", "--json"])
        fleet["host3"].stub.wait_switch_blocked()
        running = events.next(
            lambda m: (
                m["event"] == "run_updated" and ops_of(m["run"], "host3")["switch"] == "RUNNING"
            )
        )
        run_id = running["run"]["run_id"]
        assert running["run"]["status"] == "RUNNING"
        busy = dashboard.post("/api/runs", {"pipeline": "do-all", "on": "host3"})
        assert busy.status == 409
        assert dashboard.get("/api/runs").json()[0]["cancellable"] is True
        cancelled = dashboard.post(f"/api/runs/{run_id}/cancel")
        assert cancelled.status in (200, 202), cancelled.json()
        done = events.next(
            lambda m: m["event"] == "run_updated" and m["run"]["status"] != "RUNNING"
        )
        assert done["run"]["status"] == "CANCELLED"
        assert cli.wait(30) == 130  # the CLI process cancelled its own run, as on Ctrl-C
        assert ops_of(done["run"], "host3")["switch"] == "CANCELLED"


def test_a_cli_run_whose_process_died_shows_as_aborted(dashboard: DashboardServer) -> None:
    fleet = dashboard.fleet
    fleet["host1"].stub.block_switch()
    with dashboard.events() as events:
        cli = fleet.spawn_cli(["do-all", "--on", "host1"])
        fleet["host1"].stub.wait_switch_blocked()
        events.next(lambda m: m["event"] == "run_updated" and m["run"]["status"] == "RUNNING")
        cli.kill()
        cli.wait()
        aborted = events.next(
            lambda m: m["event"] == "run_updated" and m["run"]["status"] != "RUNNING"
        )
    assert aborted["run"]["status"] == "ABORTED"
    assert ops_of(aborted["run"], "host1")["switch"] == "CANCELLED"
    # its session's host lock went with it; the orphaned switch holds the host's switch lock
    # until it ends (one switch per host, ever), so let it end before the next run
    fleet["host1"].stub.release_switch()
    run_id = dashboard.start_run("do-all", on="host1")
    assert dashboard.wait_run(run_id)["status"] == "COMPLETE"


# ---------------------------------------------------------------------------------------------
# Bad requests


BAD_RUNS: list[tuple[Any, str]] = [
    ({"pipeline": "nope"}, "unknown pipeline 'nope'"),
    ({"pipeline": "do-all", "on": "web-*"}, "no host matches"),
    ({"pipeline": "merge-deploy"}, "--pr N"),
    ({"pipeline": "do-all", "pr": "7"}, '"pr" must be a positive integer'),
    ({"pipeline": "do-all", "pr": True}, '"pr" must be a positive integer'),
    ({"pipeline": "do-all", "hosts": ["host1"]}, "unknown field(s): hosts"),
    ({"pipeline": "do-all", "mode": "fast"}, '"mode" must be one of'),
    ({"pipeline": "do-all", "max_fail": "x"}, "--max-fail: expected N or P%"),
    ({"pipeline": "do-all", "on": []}, '"on" must be'),
    (["do-all"], "must be a JSON object"),
]


def test_bad_run_requests_are_refused_with_a_reason(dashboard: DashboardServer) -> None:
    for body, says in BAD_RUNS:
        answer = dashboard.post("/api/runs", body)
        assert answer.status == 400, body
        assert answer.headers["Content-Type"].startswith("application/json")
        assert says in answer.json()["error"], body
    assert dashboard.get("/api/runs").json() == []


def test_other_bad_requests(dashboard: DashboardServer) -> None:
    form = dashboard.request(
        "POST",
        "/api/runs",
        data=b"pipeline=do-all",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status == 415
    broken = dashboard.request(
        "POST", "/api/runs", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert broken.status == 400
    assert dashboard.get("/api/runs/20990101-000000-ffff").status == 404
    assert dashboard.get("/api/runs?limit=x").status == 400
    assert dashboard.get("/api/nothing").status == 404


def test_an_edited_fleet_toml_is_read_again(dashboard: DashboardServer) -> None:
    fleet = dashboard.fleet
    fleet.write_config(host_names=["host1", "host3"], hosts={"host3": {"tags": ["eu"]}})
    hosts = dashboard.get("/api/hosts").json()
    assert [(h["name"], h["tags"]) for h in hosts] == [("host1", []), ("host3", ["eu"])]
    run_id = dashboard.start_run("do-all", on="@eu")
    assert list(dashboard.wait_run(run_id)["hosts"]) == ["host3"]
    fleet.config.write_text("[hosts.x\n")
    broken = dashboard.get("/api/hosts")
    assert broken.status == 500
    assert "TOML syntax error" in broken.json()["error"]


# ---------------------------------------------------------------------------------------------
# The service itself


def test_openapi_describes_every_api_route(dashboard: DashboardServer) -> None:
    spec = dashboard.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {
        "/api/hosts",
        "/api/pipelines",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/logs",
        "/api/events",
        "/api/openapi.json",
        "/healthz",
    }
    assert set(spec["paths"]["/api/runs"]) == {"get", "post"}


def test_stopping_the_service_cancels_its_runs(dashboard: DashboardServer) -> None:
    fleet = dashboard.fleet
    fleet["host2"].stub.block_switch()
    run_id = dashboard.start_run("do-all", on="host2")
    fleet["host2"].stub.wait_switch_blocked()
    with dashboard.events() as events:
        assert dashboard.stop() == 0
        assert_stream_ended(events)
    status = fleet.run_cli(["status", "--json", run_id])
    run = json.loads(status.stdout)
    assert run["status"] == "CANCELLED"
    assert ops_of(run, "host2")["switch"] == "CANCELLED"
    assert "stopping" in dashboard.stderr()


def assert_stream_ended(events: EventStream) -> None:
    with pytest.raises(AssertionError, match="the event stream ended"):
        events.next(lambda m: False, timeout=10)
