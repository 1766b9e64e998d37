"""Fixtures of the dashboard's API tests: a real `fleet serve` over a fleet of real sshd hosts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import client_key, fleet3, fleet_factory
from tests.integration.harness import TestFleet
from tests.web.server import DashboardServer, write_token

__all__ = ["client_key", "dashboard", "fleet3", "fleet_factory"]


@pytest.fixture
def dashboard(fleet3: TestFleet) -> Iterator[DashboardServer]:
    """`fleet serve` with a token file, for the three hosts of `fleet3`; stopped after."""
    token_file = write_token(fleet3.root / "dashboard-token")
    server = DashboardServer(fleet3, token_file=token_file).start()
    yield server
    assert server.stop() == 0, server.stderr()
