"""The dashboard in a real browser: Debian Chromium driven by Playwright's sync API.

- the static report opened from file:// shows its rows and charts, renders hostile strings as
  text, runs no script but its own hash-pinned one (no dialog, no CSP violation);
- the live console follows a ``nightcore run`` made by another process (server-sent events),
  refuses a cordon without a token and performs (and audits) one with a token.

- the report of a demo-like workspace fits an 800 px window (no horizontal overflow of the
  page: wide tables scroll inside their panel), its chart labels render at 11 px or more, and
  the console's actions are disabled until a token is set.

Screenshots for reviewers go to ``artifacts/screenshots/`` (git-ignored). The two in
``docs/img/`` (README) are written only when ``NIGHTCORE_DOC_SCREENSHOTS=1`` is set:
``NIGHTCORE_DOC_SCREENSHOTS=1 .venv/bin/python -m pytest tests/browser -k layout``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nightcore.context import NodeContext
from nightcore.dashboard import build_report
from nightcore.dashboard.server import ServerThread
from nightcore.dashboard.tokens import TokenStore, parse_expires
from nightcore.runner.pipeline import run_tenants
from tests.conftest import REPO, Env, run_cli_subprocess, wat_module
from tests.unit.test_dashboard import XSS, echo_module, hostile_workspace

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "artifacts" / "screenshots"
DOC_IMG = REPO / "docs" / "img"
# read at import: the test session drops every NIGHTCORE_* variable before the tests run
WRITE_DOC_IMG = os.environ.get("NIGHTCORE_DOC_SCREENSHOTS") == "1"
VIEWPORT = {"width": 1440, "height": 1000}
BURNER = wat_module(
    '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'
)
CHATTY = (
    b"Night Core tenants run in a sandbox with fuel, wall time, memory and output limits; "
    b"every decision is written to a signed, hash-chained audit log that anyone can verify.\n"
)

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
    # one dot per run, or one dot with a count for runs too close to tell apart
    shown_runs = page.evaluate(
        "document.querySelectorAll('#timeline svg circle.dot:not(.cl)').length + "
        "[...document.querySelectorAll('#timeline svg text.count')]"
        ".reduce((n, t) => n + Number(t.textContent), 0)"
    )
    assert shown_runs == 2
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

        # Without a token the actions are disabled, and the API refuses a cordon anyway.
        cordon = hello.locator("button[data-action=cordon]")
        expect(cordon).to_be_disabled()
        expect(cordon).to_have_attribute("aria-disabled", "true")
        expect(page.locator("button[data-action=run]")).to_be_disabled()
        expect(page.locator("button[data-action=verify]")).to_be_enabled()  # read-only
        status = page.evaluate(
            "fetch('api/tenants/hello/cordon', {method: 'POST', body: '{}',"
            " headers: {'Content-Type': 'application/json'}}).then(r => r.status)"
        )
        assert status == 401
        assert not [e for e in env.audit_lines() if e["event"] == "cordon"]

        # With a token it is done, audited with the token id, and shown.
        page.fill("#token", token.token)
        page.click("#token-form button[type=submit]")
        expect(page.locator("#token-state")).to_contain_text("token set")
        expect(cordon).to_be_enabled()
        expect(cordon).to_have_attribute("aria-disabled", "false")
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


def demo_like_workspace(env: Env) -> NodeContext:
    """A few tenants like ``make demo``'s, run three times: hello, a chatty one, a fuel burner
    (FUEL_EXHAUSTED after a million units, where hello uses a few dozen), the hostile one, and
    a module altered after signing (DIGEST_MISMATCH)."""
    env.add_tenant("hello", 'description = "Prints a greeting."\n')
    env.add_tenant("chatty", 'description = "Writes a long sentence."\n', echo_module(CHATTY))
    env.add_tenant(
        "fuel-burner",
        'description = "Loops forever; its fuel must run out."\n'
        "[limits]\nfuel = 1_000_000\nwall_ms = 10_000\n",
        BURNER,
    )
    env.add_tenant("shouter", "", echo_module(b"</script><b>RED</b> " + XSS.encode()))
    tampered = env.add_tenant("tampered", 'description = "Altered after signing."\n')
    module = next(p for p in tampered.iterdir() if p.suffix == ".wasm")
    ws = NodeContext(env.ws)
    for _ in range(3):
        run_tenants(ws)
        time.sleep(1.1)
    module.write_bytes(module.read_bytes() + b"\x00")
    run_tenants(ws)
    return ws


def page_overflow(page: Any) -> int:
    """How far the page is wider than its window (0: nothing outside the viewport)."""
    return int(
        page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    )


def smallest_chart_font(page: Any) -> float:
    """The smallest on-screen font size (px) of any text in the report's charts."""
    return float(
        page.evaluate(
            """() => {
      let least = 1e9;
      for (const svg of document.querySelectorAll("svg.chart")) {
        const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
        for (const t of svg.querySelectorAll("text")) {
          least = Math.min(least, parseFloat(getComputedStyle(t).fontSize) * scale);
        }
      }
      return least;
    }"""
        )
    )


@pytest.mark.parametrize("width", [1400, 800])
def test_report_layout_fits_the_window(env: Env, browser: Any, width: int) -> None:
    from playwright.sync_api import expect

    ws = demo_like_workspace(env)
    path, _ = build_report(ws)
    page = browser.new_page(viewport={"width": width, "height": 1000})
    watch = Watch(page)
    page.goto(path.as_uri())
    expect(page.locator("#tenants tbody tr[data-tenant]")).to_have_count(5)

    assert page_overflow(page) <= 0
    # the tenant table scrolls inside its panel when it is wider than the window
    table_right = page.evaluate(
        "document.querySelector('#tenants').closest('.scroll').getBoundingClientRect().right"
    )
    assert table_right <= width
    assert smallest_chart_font(page) >= 11
    assert page.locator("svg.chart[data-scale=log]").count() >= 1  # fuel: 1,000,000 vs dozens
    burner = page.locator('#tenants tr[data-tenant="fuel-burner"]')
    expect(burner.locator("td.last .badge")).to_have_text("FUEL_EXHAUSTED")
    expect(burner.locator("td.verdict .badge")).to_have_text("VERIFIED")
    expect(page.locator('#tenants tr[data-tenant="chatty"] pre.out')).to_contain_text("…")
    assert watch.csp_violations() == [] and watch.dialogs == []

    screenshot(page, f"report-{width}.png")
    screenshot(page, f"report-{width}-full.png", full_page=True)
    if WRITE_DOC_IMG:
        DOC_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOC_IMG / f"dashboard-{width}.png"))
    page.close()


def test_console_fits_800_px_and_needs_a_token_for_actions(env: Env, browser: Any) -> None:
    from playwright.sync_api import expect

    ws = demo_like_workspace(env)
    token = TokenStore(ws).create(parse_expires("1h"))
    with ServerThread(ws) as server:
        page = browser.new_page(viewport={"width": 800, "height": 1000})
        watch = Watch(page)
        page.goto(server.url)
        actions = page.locator("button[data-needs-token]")
        expect(actions).to_have_count(2 + 5)  # run, checkpoint, one per tenant
        for i in range(actions.count()):
            expect(actions.nth(i)).to_be_disabled()
            expect(actions.nth(i)).to_have_attribute("aria-disabled", "true")
        assert page_overflow(page) <= 0
        page.fill("#token", token.token)
        page.click("#token-form button[type=submit]")
        for i in range(actions.count()):
            expect(actions.nth(i)).to_be_enabled()
        assert page_overflow(page) <= 0
        assert watch.csp_violations() == []
        screenshot(page, "console-800.png")
        page.close()
