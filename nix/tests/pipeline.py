# ruff: noqa: F821
# The pipeline test (nix/tests/pipeline.nix); common.py comes before this.
setup()
first_systems = {machine.name: current_system(machine) for machine in TARGETS}

with subtest("A change that breaks target3: PARTIAL; the others pull, switch and test"):
    commit = publish("broken", "Add /etc/fleet-marker (v2); break target3")
    run = fleet_run("do-all", expect=3)
    assert run["status"] == "PARTIAL", run["status"]
    for machine in (target1, target2):
        assert_deployed(run, machine, "broken", commit)
        assert current_system(machine) != first_systems[machine.name]

    # target3 pulled, failed to evaluate its system, skipped its test, and runs what it ran.
    host = run["hosts"]["target3"]
    assert host["status"] == "FAILED", host
    assert host["failed_op"] == "switch", host
    assert op_statuses(run, "target3") == {
        "pull": "SUCCESS",
        "switch": "FAILED",
        "test": "SKIPPED",
    }, host
    assert checked_out(target3) == commit
    assert current_system(target3) == first_systems["target3"]
    assert marker(target3) is None

with subtest("The repaired configuration: COMPLETE"):
    commit = publish("repaired", "Repair target3")
    run = fleet_run("do-all", expect=0)
    assert run["status"] == "COMPLETE", run["status"]
    for machine in TARGETS:
        assert_deployed(run, machine, "repaired", commit)
    assert current_system(target3) != first_systems["target3"]

with subtest("target2 cut off the network: FAILED at pull; the others COMPLETE"):
    commit = publish("cut", "/etc/fleet-marker: v3")
    kept = current_system(target2)
    target2.block()
    try:
        run = fleet_run("do-all", expect=3)
    finally:
        target2.unblock()
    assert run["status"] == "PARTIAL", run["status"]
    host = run["hosts"]["target2"]
    assert host["status"] == "FAILED", host
    assert host["failed_op"] == "pull", host
    for machine in (target1, target3):
        assert_deployed(run, machine, "cut", commit)
    assert current_system(target2) == kept
    assert marker(target2) == MARKERS["repaired"]["target2"]
