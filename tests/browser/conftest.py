"""Fixtures of the browser test: `fleet serve` over real sshd hosts, and Debian's Chromium
driven by Playwright (sync API; no pytest plugin). CI installs both (.ci/run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.integration.conftest import client_key, fleet3, fleet_factory
from tests.integration.harness import TestFleet
from tests.web.server import DashboardServer, write_token

__all__ = ["browser", "client_key", "dashboard", "fleet3", "fleet_factory", "page"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def dashboard(fleet3: TestFleet) -> Iterator[DashboardServer]:
    token_file = write_token(fleet3.root / "dashboard-token")
    server = DashboardServer(fleet3, token_file=token_file).start()
    yield server
    assert server.stop() == 0, server.stderr()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium (Debian's), with a fresh profile each launch."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()
