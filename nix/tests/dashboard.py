# ruff: noqa: F821
# The dashboard test (nix/tests/dashboard.nix); common.py (and its imports) comes before this.
URL = "http://127.0.0.1:8470"
first_commit = setup()

with subtest("The service is up; it generated its token and logged only where it is"):
    controller.wait_for_unit("fleet.service")
    controller.wait_for_open_port(8470)
    controller.succeed(f"curl --fail --silent {URL}/healthz")
    assert controller.succeed("stat -c '%a %U' /var/lib/fleet/token").strip() == "600 fleet"
    token = controller.succeed("cat /var/lib/fleet/token").strip()
    journal = controller.succeed("journalctl --unit fleet.service --output cat")
    assert "/var/lib/fleet/token" in journal, journal
    assert token not in journal, "the token is in the journal"
    refused = controller.succeed(
        f"curl --silent --output /dev/null --write-out '%{{http_code}}' -X POST {URL}/api/runs"
    )
    assert refused.strip() in ("401", "403"), refused

with subtest("The service clones the controller repository on start"):
    # Its first start came before the repository existed; that start logged it and went on.
    controller.succeed("systemctl restart fleet.service")
    controller.wait_for_open_port(8470)
    git = "runuser -u fleet -- env HOME=/var/lib/fleet git -C /var/lib/fleet/repo"
    assert controller.succeed(f"{git} rev-parse HEAD").strip() == first_commit
    assert controller.succeed(f"{git} config user.name").strip() == "fleet (VM test)"

with subtest("Do All through the API: the same pipeline, to COMPLETE"):
    commit = publish("deploy", "Add /etc/fleet-marker (v2)")
    first_system = current_system(target1)
    auth = shlex.quote(f"Authorization: Bearer {token}")
    body = shlex.quote(json.dumps({"pipeline": "do-all"}))
    started = controller.succeed(
        f"curl --fail --silent -X POST -H {auth} -H 'Content-Type: application/json'"
        f" --data {body} {URL}/api/runs"
    )
    run_url = shlex.quote(f"{URL}/api/runs/{json_of(started)['run_id']}")
    controller.wait_until_succeeds(
        f"curl --fail --silent -H {auth} {run_url} | jq -e '.status != \"RUNNING\"'",
        timeout=1800,
    )
    run = json_of(controller.succeed(f"curl --fail --silent -H {auth} {run_url}"))
    assert run["pipeline"] == "do-all", run["pipeline"]
    assert run["status"] == "COMPLETE", json.dumps(run, indent=2)
    assert_deployed(run, target1, "deploy", commit)
    assert current_system(target1) != first_system

    # The fleet command reads the service's state, for root and for members of the fleet group.
    status = f"fleet status {shlex.quote(run['run_id'])} --json"
    assert json_of(controller.succeed(status))["status"] == "COMPLETE"
    assert json_of(controller.succeed(f"runuser -u alice -- {status}"))["status"] == "COMPLETE"
