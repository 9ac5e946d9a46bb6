"""The dashboard in a real browser: Debian Chromium driven by Playwright's sync API.

- the static report opened from file:// shows its rows and charts, renders hostile strings as
  text, runs no script but its own hash-pinned one (no dialog, no CSP violation);
- the live console follows a ``nightcore run`` made by another process (server-sent events),
  refuses a cordon without a token and performs (and audits) one with a token.

Screenshots for reviewers go to ``artifacts/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nightcore.context import NodeContext
from nightcore.dashboard import build_report
from nightcore.dashboard.server import ServerThread
from nightcore.dashboard.tokens import TokenStore, parse_expires
from tests.conftest import REPO, Env, run_cli_subprocess
from tests.unit.test_dashboard import XSS, hostile_workspace

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "artifacts" / "screenshots"
VIEWPORT = {"width": 1440, "height": 1000}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian chromium is not installed (/usr/bin/chromium); `make test` installs it via "
    "tools/system_deps.py, or: apt-get install -y chromium",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


class Watch:
    """Dialogs (dismissed, so the page never hangs) and console messages of one page."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.console: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def csp_violations(self) -> list[str]:
        return [
            m
            for m in self.console
            if "Content Security Policy" in m or "Refused to" in m or m.startswith("pageerror")
        ]


def screenshot(page: Any, name: str, *, full_page: bool = False) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page)


def test_static_report_from_file_url(env: Env, browser: Any) -> None:
    from playwright.sync_api import expect

    ws = hostile_workspace(env)
    path, _ = build_report(ws)
    page = browser.new_page(viewport=VIEWPORT)
    watch = Watch(page)
    page.goto(path.as_uri())

    rows = page.locator("#tenants tbody tr[data-tenant]")
    expect(rows).to_have_count(2)
    hello = page.locator('#tenants tr[data-tenant="hello"]')
    expect(hello.locator("td.verdict .badge")).to_have_text("OK")
    expect(hello.locator("td.last .badge")).to_have_text("OK")
    expect(hello.locator("pre.out")).to_have_text("hello")
    assert page.locator("svg.chart").count() == 4
    assert page.locator("#timeline svg circle.dot").count() == 2  # one per run
    expect(page.locator("#runs tbody tr")).to_have_count(2)

    # Hostile strings are text: nothing became an element, a link or a script.
    expect(page.locator("#invalid")).to_contain_text(XSS)
    shouter = page.locator('#tenants tr[data-tenant="shouter"]')
    expect(shouter.locator("pre.out")).to_contain_text("</script><script>alert(1)</script>RED")
    expect(shouter).to_contain_text("javascript:alert(1)")
    assert "\x1b" not in shouter.inner_text()
    assert page.locator("img").count() == 0 and page.locator("a").count() == 0
    assert page.locator("script").count() == 1

    # The report's own script runs under its CSP: the tenant filter works.
    page.fill("#tenant-filter", "shout")
    expect(hello).to_be_hidden()
    expect(page.locator("#filter-count")).to_have_text("1 shown")
    page.fill("#tenant-filter", "")
    expect(hello).to_be_visible()

    assert watch.dialogs == []
    assert watch.csp_violations() == []
    assert [m for m in watch.console if m.startswith("error")] == []
    screenshot(page, "static-report.png")
    screenshot(page, "static-report-full.png", full_page=True)
    page.close()


def test_live_console_follows_a_cli_run_and_cordons_with_a_token(env: Env, browser: Any) -> None:
    from playwright.sync_api import expect

    env.add_tenant("hello")
    env.add_tenant("second")
    ws = NodeContext(env.ws)
    token = TokenStore(ws).create(parse_expires("1h"))
    with ServerThread(ws) as server:
        page = browser.new_page(viewport=VIEWPORT)
        watch = Watch(page)
        page.goto(server.url)
        hello = page.locator('#tenants tr[data-tenant="hello"]')
        expect(hello.locator("td.last .badge")).to_have_text("NO_RUNS")
        expect(page.locator("#live-state")).to_have_class("live")

        # Another process runs a tenant: the page follows within a couple of seconds.
        res = run_cli_subprocess("-w", str(env.ws), "run", "hello")
        assert res.code == 0, res.err
        started = time.monotonic()
        expect(hello.locator("td.last .badge")).to_have_text("OK", timeout=10_000)
        print(f"live update seen {time.monotonic() - started:.2f} s after the run finished")

        # Without a token a cordon is refused, and nothing is logged.
        hello.locator("button[data-action=cordon]").click()
        expect(page.locator("#action-status")).to_contain_text("401 TOKEN_MISSING")
        assert not [e for e in env.audit_lines() if e["event"] == "cordon"]

        # With a token it is done, audited with the token id, and shown.
        page.fill("#token", token.token)
        page.click("#token-form button[type=submit]")
        expect(page.locator("#token-state")).to_contain_text("token set")
        page.fill("#reason", "incident <b>42</b>")
        hello.locator("button[data-action=cordon]").click()
        expect(page.locator("#action-status")).to_have_text("cordoned hello")
        expect(hello.locator("td.verdict")).to_contain_text("CORDONED", timeout=10_000)
        expect(hello.locator("td.verdict .reason")).to_have_text("incident <b>42</b>")
        event = page.locator('#events tr[data-event="cordon"]').first
        expect(event).to_contain_text(f"actor=token:{token.id}")
        [cordon] = [e for e in env.audit_lines() if e["event"] == "cordon"]
        assert cordon["tenant"] == "hello" and cordon["data"]["actor"] == f"token:{token.id}"
        expect(hello.locator("button[data-action=uncordon]")).to_be_visible()

        assert watch.dialogs == []
        assert watch.csp_violations() == []
        screenshot(page, "live-console.png")
        page.close()


def test_live_updates_with_a_token_when_events_need_one(env: Env, browser: Any) -> None:
    """A console not bound to loopback only serves /events with the token: the page's script
    sends it (fetch, not EventSource), and follows runs once a token is set."""
    from playwright.sync_api import expect

    env.add_tenant("hello")
    ws = NodeContext(env.ws)
    token = TokenStore(ws).create(parse_expires("1h"))
    with ServerThread(ws, events_token=True) as server:
        page = browser.new_page(viewport=VIEWPORT)
        watch = Watch(page)
        page.goto(server.url)
        expect(page.locator("#live-state")).to_have_text("live updates need a token")
        expect(page.locator("#live-state")).to_have_class("live down")
        page.fill("#token", token.token)
        page.click("#token-form button[type=submit]")
        expect(page.locator("#live-state")).to_have_class("live")
        hello = page.locator('#tenants tr[data-tenant="hello"]')
        res = run_cli_subprocess("-w", str(env.ws), "run", "hello")
        assert res.code == 0, res.err
        expect(hello.locator("td.last .badge")).to_have_text("OK", timeout=10_000)
        assert watch.dialogs == [] and watch.csp_violations() == []
        page.close()
