"""The dashboard in a real browser (headless Chromium) against real sshd hosts.

Log in, click Do All and watch the rows go through pull -> switch -> test live: the stub's
switch waits on a FIFO, and the RUNNING cell is asserted before it is released, in the same
document (no reload). Then PARTIAL with the broken host marked and its test skipped, its switch
log, a second run cancelled from the page, and the refusals: no token, another origin.

FLEET_DASHBOARD_SCREENSHOT=path saves the page after the PARTIAL run there (docs/dashboard.png
is made this way).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.integration.harness import free_port
from tests.web.server import TOKEN, DashboardServer

pytestmark = pytest.mark.sshd

ATTACK_PAGE = """<!doctype html><title>elsewhere</title>
<form id="f" method="post" action="{action}" enctype="text/plain">
<input name='{{"pipeline":"do-all","x":"' value='"}}'></form>
<script>document.getElementById("f").submit()</script>"""


def op(page: Page, host: str, name: str) -> Locator:
    return page.locator(f'#hosts tr[data-host="{host}"] [data-op="{name}"]')


def row(page: Page, host: str) -> Locator:
    return page.locator(f'#hosts tr[data-host="{host}"]')


def log_in(page: Page, dashboard: DashboardServer) -> None:
    page.goto(dashboard.url)
    expect(page).to_have_url(dashboard.url + "login")
    page.get_by_label("Access token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(dashboard.url)
    expect(page.locator("#connection")).to_have_text("live")
    expect(page.locator("#hosts tbody tr")).to_have_count(3)


def test_do_all_live_partial_log_and_cancel(
    dashboard: DashboardServer, page: Page, tmp_path: Path
) -> None:
    fleet = dashboard.fleet
    tags = {"host1": ["web", "eu"], "host2": ["db", "eu"], "host3": ["web", "us"]}
    fleet.write_config(hosts={name: {"tags": t} for name, t in tags.items()})
    fleet.break_host("host2")
    for name in ("host1", "host3"):
        fleet[name].stub.block_switch()
    log_in(page, dashboard)
    for name, host_tags in tags.items():
        expect(row(page, name).locator("td.tags")).to_have_text(", ".join(host_tags))
        sshd = fleet[name]
        expect(row(page, name).locator("td.address")).to_have_text(f"{sshd.address}:{sshd.port}")
    expect(op(page, "host1", "pull")).to_have_count(0)  # never run yet
    page.evaluate("window.sameDocument = true")

    page.get_by_role("button", name="Do All").click()
    # live: host1 is switching (blocked on the FIFO), the page says so before it is released
    expect(op(page, "host1", "pull")).to_have_attribute("data-status", "SUCCESS")
    expect(op(page, "host1", "switch")).to_have_attribute("data-status", "RUNNING")
    expect(op(page, "host1", "test")).to_have_attribute("data-status", "PENDING")
    expect(row(page, "host1").locator("td.now")).to_contain_text("switch 0:")
    expect(page.locator("#run-status")).to_have_text("RUNNING")
    expect(page.get_by_role("button", name="Cancel run")).to_be_enabled()
    # host2 failed to switch meanwhile: marked, its test skipped, while the run still goes on
    expect(op(page, "host2", "switch")).to_have_attribute("data-status", "FAILED")
    expect(op(page, "host2", "test")).to_have_attribute("data-status", "SKIPPED")
    expect(row(page, "host2")).to_have_attribute("data-status", "FAILED")
    expect(row(page, "host2").locator(".failed-mark")).to_have_text("FAILED at switch")
    for name in ("host1", "host3"):
        fleet[name].stub.wait_switch_blocked()
        expect(op(page, name, "switch")).to_have_attribute("data-status", "RUNNING")
    expect(page.locator("#run-status")).to_have_text("RUNNING")
    for name in ("host1", "host3"):
        fleet[name].stub.release_switch()

    expect(page.locator("#run-status")).to_have_text("PARTIAL")
    for name in ("host1", "host3"):
        for step in ("pull", "switch", "test"):
            expect(op(page, name, step)).to_have_attribute("data-status", "SUCCESS")
        expect(row(page, name)).to_have_attribute("data-status", "COMPLETE")
    expect(op(page, "host2", "test")).to_have_attribute("data-status", "SKIPPED")
    expect(row(page, "host2")).to_have_attribute("data-status", "FAILED")
    expect(row(page, "host1").locator("td.system")).to_contain_text("1 → 2")
    expect(page.locator("#history tbody tr")).to_have_count(1)
    expect(page.locator("#history tbody tr").first).to_contain_text("PARTIAL")
    expect(page.get_by_role("button", name="Cancel run")).to_be_disabled()
    assert page.evaluate("window.sameDocument") is True  # live updates, not a reload
    save_screenshot(page, tmp_path)

    # the broken host's switch log
    op(page, "host2", "switch").click()
    dialog = page.locator("#log-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#log-title")).to_have_text("host2 · switch")
    expect(page.locator("#log-text")).to_contain_text("assertion failed")
    expect(page.locator("#log-meta")).to_contain_text("FAILED")
    page.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()

    # another run, on the ticked host only, cancelled from the page
    fleet["host1"].stub.block_switch()
    page.get_by_label("Select host1").check()
    expect(page.locator("#target")).to_have_text("On 1 selected host: host1.")
    page.get_by_role("button", name="Do All").click()
    expect(op(page, "host1", "switch")).to_have_attribute("data-status", "RUNNING")
    expect(page.locator("#run-status")).to_have_text("RUNNING")
    fleet["host1"].stub.wait_switch_blocked()
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#run-status")).to_have_text("CANCELLED")
    expect(op(page, "host1", "switch")).to_have_attribute("data-status", "CANCELLED")
    expect(op(page, "host1", "test")).to_have_attribute("data-status", "CANCELLED")
    expect(op(page, "host2", "switch")).to_have_attribute("data-status", "FAILED")  # untouched
    expect(page.locator("#history tbody tr")).to_have_count(2)
    runs = dashboard.get("/api/runs").json()
    assert [(r["pipeline"], r["status"], r["hosts_total"]) for r in runs] == [
        ("do-all", "CANCELLED", 1),
        ("do-all", "PARTIAL", 3),
    ]
    assert page.evaluate("window.sameDocument") is True


def test_no_token_and_other_origins_are_refused(
    dashboard: DashboardServer, browser: Browser, page: Page
) -> None:
    # a browser that never logged in gets the login page, and the API refuses it
    stranger = browser.new_context()
    try:
        other = stranger.new_page()
        other.goto(dashboard.url)
        expect(other).to_have_url(dashboard.url + "login")
        answer = other.goto(dashboard.url + "api/hosts")
        assert answer is not None and answer.status == 401
        status = other.evaluate(
            "fetch('/api/runs', {method: 'POST', headers: {'Content-Type': 'application/json'},"
            " body: JSON.stringify({pipeline: 'do-all'})}).then(r => r.status)"
        )
        assert status == 401
        # the link `fleet serve` prints on a terminal logs in (the token is in the fragment)
        other.goto(f"{dashboard.url}login#token={TOKEN}")
        expect(other).to_have_url(dashboard.url)
        expect(other.locator("#hosts tbody tr")).to_have_count(3)
    finally:
        stranger.close()

    # a logged-in browser on a page of another origin (same site: the cookie goes along)
    log_in(page, dashboard)
    elsewhere = f"http://127.0.0.1:{free_port('127.0.0.1')}/attack.html"
    body = ATTACK_PAGE.format(action=dashboard.url + "api/runs")
    page.route(elsewhere, lambda route: route.fulfill(content_type="text/html", body=body))
    with page.expect_response(lambda r: r.url == dashboard.url + "api/runs") as info:
        page.goto(elsewhere)
    assert info.value.status == 403
    assert "refused" in info.value.text()
    assert dashboard.get("/api/runs").json() == []


def save_screenshot(page: Page, tmp_path: Path) -> None:
    page.locator("#history").scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, 0)")
    target = os.environ.get("FLEET_DASHBOARD_SCREENSHOT")
    path = Path(target) if target else tmp_path / "dashboard.png"
    page.screenshot(path=str(path), full_page=True)


def test_phone_dark_mode_and_keyboard(browser: Browser, dashboard: DashboardServer) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True
    )
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        log_in(page, dashboard)
        # nothing wider than a phone's screen: no sideways scrolling
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        # dark mode: a dark background behind light text
        colours = page.evaluate(
            """() => {
              const lum = (c) => c.match(/\\d+/g).slice(0, 3).map(Number).reduce((a, b) => a + b);
              const body = getComputedStyle(document.body);
              return [lum(body.backgroundColor), lum(body.color)];
            }"""
        )
        assert colours[0] < 200 < colours[1], colours
        # every action is a labelled button, reachable from the keyboard
        for name in ("Do All", "Merge & Deploy", "Update Agent", "Force Update"):
            expect(page.get_by_role("button", name=name)).to_be_visible()
        page.locator("body").focus()
        focused: list[str] = []
        for _ in range(12):
            page.keyboard.press("Tab")
            focused.append(page.evaluate("document.activeElement.id || ''"))
        assert "do-all" in focused, focused
    finally:
        context.close()
