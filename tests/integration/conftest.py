"""Fixtures of the integration tests: simulated fleets of real sshd servers (see harness/).

Tests that use them are marked `sshd` and `root` (tests/conftest.py). They need root, OpenSSH's
sshd, ssh-keygen and git: a machine without them skips these tests, except under CI (CI set),
where they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import ClientKey, FleetFactory, TestFleet, missing_requirements


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    """The key pair fleet logs in with, generated once per test session."""
    if missing := missing_requirements():
        message = "the sshd harness needs: " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return ClientKey.generate(tmp_path_factory.mktemp("client-key"))


@pytest.fixture
def fleet_factory(tmp_path: Path, client_key: ClientKey) -> Iterator[FleetFactory]:
    """`fleet_factory(n=3, names=..., single_address=..., empty_known_hosts=..., units=...)`
    starts a TestFleet; every fleet is torn down (and checked for leaks) after the test."""
    factory = FleetFactory(tmp_path, client_key)
    yield factory
    factory.close()


@pytest.fixture
def fleet3(fleet_factory: FleetFactory) -> TestFleet:
    """Three hosts: host1, host2, host3 on 127.0.0.2-4."""
    return fleet_factory(3)
