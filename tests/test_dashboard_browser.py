"""The dashboard in a real browser: headless Chromium (the system's, driven by Playwright) against `iobot run`.

The service runs as operators run it, `iobot run --emulator` chatting on its piped stdin, and answers
a scripted set of requests (answers, an agent, bad input, a rate limit) before the browser signs in.
Each chart's table must then hold the ledger's numbers, the page must log no error, and no request
may leave 127.0.0.1. Chromium is the distribution's (`apt-get install chromium`, as .ci/run does):
nothing is downloaded. In CI a missing Chromium fails these tests; elsewhere they are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from core.ledger import SQLiteLedger
from core.quotas import load_quota_table

from .conftest import piped
from .dashboard_tables import CHARTS, as_rows, ledger_tables
from .test_cli import IOBOT, environment

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-admin-token-8e1d4b7f2a90c3"
PERSON = "console:ana"
SCRIPT = [
    "ask What is io.net?",
    "summarize 10 iobot connects chat platforms to the IO Intelligence API. It runs agents for teams.",
    "translate french Good morning",
    "translate",  # bad input: refused before it counts against the rate
    "sentiment I love this product",
    "ask Why is the sky blue?",
    "reason What is 12 times 12?",
    "ask One more question",
    "ask And another one",  # the 8th counted request: the last the rate allows
    "ask Over the rate",
    "ask Over the rate again",
    "help",
]
REQUESTS_PER_MINUTE = 8
ARTIFACTS = Path(os.environ.get("IOBOT_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")


def artifacts() -> Path:
    """Where screenshots go: $IOBOT_TEST_ARTIFACTS, or tests/artifacts (ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def require_chromium() -> None:
    """Fail in CI, skip elsewhere, when there is no browser to drive."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "Playwright for Python is not installed (pip install -e '.[test]')"
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI: {missing}")
    pytest.skip(missing)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`iobot run --emulator` with the dashboard on, after the script: its base URL and its ledger's path."""
    require_chromium()
    workdir = tmp_path_factory.mktemp("dashboard")
    log_path = workdir / "iobot.log"
    env = environment(
        workdir,
        USER="ana",
        LOGNAME="ana",
        IOBOT_ADMIN_TOKEN=TOKEN,
        IOBOT_USER_REQUESTS_PER_MINUTE=str(REQUESTS_PER_MINUTE),
    )
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*IOBOT, "run", "--emulator"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            cwd=workdir,
            env=env,
        )
    try:
        stdin = piped(process.stdin)
        stdin.write("".join(f"{line}\n" for line in SCRIPT))
        stdin.flush()  # kept open: the console chats until its input ends, and the page is read meanwhile
        port = wait_for(lambda: re.search(r"HTTP server on 127\.0\.0\.1:(\d+)", log_path.read_text()), process)[1]
        wait_for(lambda: log_path.read_text().count(" outcome=") >= len(SCRIPT), process)
        yield f"http://127.0.0.1:{port}", workdir / "ledger.sqlite3"
        stdin.close()
        assert process.wait(timeout=30) == 0, log_path.read_text()
    finally:
        process.kill()


def wait_for(found: Any, process: subprocess.Popen[str], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := found():
            return value
        assert process.poll() is None, "iobot run stopped early"
        time.sleep(0.1)
    raise AssertionError("iobot run did not get there in time")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def sign_in(page: Any, base_url: str, token: str) -> Any:
    await page.goto(f"{base_url}/dashboard")
    await page.fill("input[name=token]", token)
    async with page.expect_navigation() as navigation:
        await page.click("button[type=submit]")
    return await navigation.value


async def table(page: Any, chart: str) -> list[Any]:
    cells = await page.eval_on_selector_all(
        f"#{chart} tbody tr", "rows => rows.map(row => Array.from(row.cells).map(cell => cell.textContent.trim()))"
    )
    return as_rows(cells)


async def test_a_wrong_token_is_refused_and_the_right_one_opens_the_page(service, browser):
    base_url, _ = service
    page = await browser.new_page()
    refused = await sign_in(page, base_url, "not-the-admin-token")
    assert refused.status == 401 and await page.is_visible("text=That is not the admin token.")
    assert await page.context.cookies() == []
    opened = await sign_in(page, base_url, TOKEN)
    assert opened.status == 200 and await page.title() == f"iobot dashboard: {datetime.now(UTC).date()}"
    [cookie] = await page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]


async def test_each_chart_is_drawn_beside_a_table_of_the_ledgers_numbers(service, browser):
    base_url, ledger_path = service
    page = await browser.new_page()
    await sign_in(page, base_url, TOKEN)
    shown = {}
    for chart in CHARTS:
        assert await page.is_visible(f"#{chart} svg.chart"), chart
        shown[chart] = await table(page, chart)
    ledger = await SQLiteLedger.open(str(ledger_path), user_daily_tokens=50_000, owner=False, create=False)
    try:
        expected = await ledger_tables(ledger, ledger.store, load_quota_table(), datetime.now(UTC).date())
    finally:
        await ledger.close()
    assert shown == expected
    assert shown["refusals"] == [("rate limit", 2), ("bad input", 1)]
    assert [row[0] for row in shown["top-people"]] == [PERSON]
    answered = sum(row[1] for row in shown["latency"])
    assert answered == REQUESTS_PER_MINUTE, "every counted request was answered and timed"
    bars = await page.eval_on_selector_all("#latency svg.chart rect.fill", "bars => bars.length")
    assert bars == len(shown["latency"])


async def test_the_page_logs_no_error_and_asks_nothing_of_any_host_but_iobot(service, browser):
    base_url, _ = service
    page = await browser.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    await sign_in(page, base_url, TOKEN)
    await page.reload()
    await page.wait_for_load_state("networkidle")
    assert errors == []
    assert requests and all(urlsplit(url).hostname == "127.0.0.1" for url in requests), requests
    assert any(url.endswith("/dashboard/static/dashboard.css") for url in requests)
    styled = await page.eval_on_selector("section", "section => getComputedStyle(section).borderRadius")
    assert styled == "8px", "the stylesheet applied"


async def test_the_tables_read_without_javascript_and_the_page_fits_a_phone(service, browser):
    base_url, _ = service
    context = await browser.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = await context.new_page()
    await sign_in(page, base_url, TOKEN)
    for chart in CHARTS:
        assert await page.is_visible(f"#{chart} table"), chart
    assert await table(page, "top-people")
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, "no sideways scrolling on a phone: wide tables scroll inside their box"
    await page.screenshot(path=str(artifacts() / "dashboard-phone.png"), full_page=True)
    await context.close()


async def test_a_screenshot_of_the_page_is_kept_as_an_artifact(service, browser):
    base_url, _ = service
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await sign_in(page, base_url, TOKEN)
    path = artifacts() / "dashboard.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
