"""The operator's dashboard over plain HTTP: off without a token, who gets in, what they see, and /api/usage.

The same page in a real browser is in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from bots.dashboard import Dashboard
from bots.dashboard.access import MAX_FAILURES, SESSION_COOKIE, SESSION_SECONDS, AdminAccess
from bots.http import HealthState, make_http_app, start_http_server
from core.client import IOClient
from core.errors import Refusal
from core.ledger import Ledger
from core.ledger.postgres import PostgresLedger
from core.quotas import load_quota_table
from core.service import Request, Service, ServiceConfig
from core.settings import load_settings

from .conftest import piped
from .dashboard_tables import CHARTS, ledger_tables, page_tables
from .test_cli import IOBOT, environment

TOKEN = "dash-admin-token-5d2f9c41a7e3b6"  # looks like a real secret, so that a leak would be spotted
MODEL = "meta-llama/Llama-3.3-70B-Instruct"
ANN, BOB = "slack:T1:U1", "discord:42"
QUOTAS = load_quota_table()
DASHBOARD_PATHS = [
    ("GET", "/dashboard"),
    ("POST", "/dashboard/login"),
    ("POST", "/dashboard/logout"),
    ("GET", "/dashboard/static/dashboard.css"),
    ("GET", "/api/usage"),
]


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def serve(ledger: Ledger, client: IOClient, dashboard: Dashboard | None) -> AsyncIterator[httpx.AsyncClient]:
    runner, port = await start_http_server(
        make_http_app(HealthState(ledger, client, QUOTAS), dashboard=dashboard), "127.0.0.1", 0
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", follow_redirects=False) as http:
            yield http
    finally:
        await runner.cleanup()


@pytest.fixture
async def http(ledger, client, clock) -> AsyncIterator[httpx.AsyncClient]:
    dashboard = Dashboard(SecretStr(TOKEN), ledger, ledger.store, QUOTAS, user_daily_tokens=50_000, clock=clock)
    async for opened in serve(ledger, client, dashboard):
        yield opened


async def sign_in(http: httpx.AsyncClient) -> str:
    """A session cookie's value; the client keeps no cookie, so each request says whether it sends one."""
    response = await http.post("/dashboard/login", data={"token": TOKEN})
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    http.cookies.clear()
    return response.cookies[SESSION_COOKIE]


def with_cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={value}"}


async def spend(ledger: Ledger, user: str, model: str, tokens: int, seconds: float) -> None:
    reservation = await ledger.reserve(user=user, model=model, tokens=0, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=tokens, completion_tokens=0, estimated=False, seconds=seconds)


# --- off unless IOBOT_ADMIN_TOKEN is set ---


async def test_without_an_admin_token_every_dashboard_path_is_a_404(ledger, client):
    async for http in serve(ledger, client, None):
        for method, path in DASHBOARD_PATHS:
            response = await http.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 404, (method, path)
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize("token", [None, TOKEN])
def test_iobot_run_serves_the_dashboard_only_with_an_admin_token(tmp_path, token):
    env = {"USER": "ana", "LOGNAME": "ana", **({"IOBOT_ADMIN_TOKEN": token} if token else {})}
    log_path = tmp_path / "iobot.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*IOBOT, "run", "--emulator"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            cwd=tmp_path,
            env=environment(tmp_path, **env),
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"HTTP server on 127\.0\.0\.1:(\d+)", log_path.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        base_url = f"http://127.0.0.1:{found[1]}"
        page = httpx.get(f"{base_url}/dashboard")
        usage = httpx.get(f"{base_url}/api/usage", headers={"Authorization": f"Bearer {TOKEN}"})
        if token is None:
            assert (page.status_code, usage.status_code) == (404, 404)
        else:
            assert page.status_code == 200 and 'name="token"' in page.text and usage.json() == []
        piped(process.stdin).close()
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    assert TOKEN not in log_path.read_text()


def test_the_admin_token_is_a_secret_setting_of_16_characters_or_more(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IOBOT_ADMIN_TOKEN", TOKEN)
    settings = load_settings()
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)
    monkeypatch.setenv("IOBOT_ADMIN_TOKEN", "short-secret")
    with pytest.raises(ValueError, match="IOBOT_ADMIN_TOKEN") as refused:
        load_settings()
    assert "short-secret" not in str(refused.value)
    monkeypatch.delenv("IOBOT_ADMIN_TOKEN")
    assert load_settings().admin_token is None


# --- signing in ---


async def test_without_a_session_the_page_is_the_login_form_and_shows_no_figures(http, ledger):
    await spend(ledger, ANN, MODEL, 1_234, 0.5)
    response = await http.get("/dashboard")
    assert response.status_code == 200 and 'name="token"' in response.text and 'action="/dashboard/login"' in response.text
    assert "1,234" not in response.text and ANN not in response.text
    assert not any(f'id="{chart}"' in response.text for chart in CHARTS)


async def test_the_right_token_sets_an_httponly_strict_session_cookie_that_opens_the_page(http, caplog):
    caplog.set_level(logging.DEBUG)
    response = await http.post("/dashboard/login", data={"token": TOKEN})
    assert response.status_code == 303
    [header] = response.headers.get_list("set-cookie")
    cookie = SimpleCookie(header)[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/dashboard"
    assert not cookie["secure"], "plain http here: a Secure cookie would never come back"
    assert int(cookie["max-age"]) == SESSION_SECONDS
    assert TOKEN not in header
    page = await http.get("/dashboard", headers=with_cookie(cookie.value))
    assert page.status_code == 200 and all(f'id="{chart}"' in page.text for chart in CHARTS)
    assert TOKEN not in page.text and TOKEN not in caplog.text


async def test_behind_an_https_proxy_the_cookie_is_secure(http):
    response = await http.post("/dashboard/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"})
    assert SimpleCookie(response.headers["set-cookie"])[SESSION_COOKIE]["secure"]


async def test_a_wrong_token_is_401_and_after_a_few_the_address_is_refused_even_the_right_token(http, clock, caplog):
    caplog.set_level(logging.DEBUG)
    for attempt in range(MAX_FAILURES):
        response = await http.post("/dashboard/login", data={"token": f"guess-{attempt}"})
        assert response.status_code == 401 and "That is not the admin token." in response.text
        assert "set-cookie" not in response.headers
    refused = await http.post("/dashboard/login", data={"token": TOKEN})
    assert refused.status_code == 429 and "set-cookie" not in refused.headers and 0 < int(refused.headers["retry-after"]) <= 60
    bearer = await http.get("/api/usage", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 429, "the API shares the throttle"
    clock.now += timedelta(seconds=61)
    await sign_in(http)
    assert "guess-" not in caplog.text


async def test_forged_expired_and_other_tokens_sessions_are_refused(http, clock):
    session = await sign_in(http)
    expires, nonce, mac = session.split(".")
    other = AdminAccess(SecretStr("another-admin-token-0000"), clock=lambda: clock.now.timestamp()).new_session()
    for cookie in (f"{int(expires) + 999}.{nonce}.{mac}", f"{expires}.{nonce}.{'0' * len(mac)}", other, "", "a.b", session + "x"):
        page = await http.get("/dashboard", headers=with_cookie(cookie))
        assert 'name="token"' in page.text and 'id="refusals"' not in page.text, cookie
    assert 'id="refusals"' in (await http.get("/dashboard", headers=with_cookie(session))).text
    clock.now += timedelta(seconds=SESSION_SECONDS + 1)
    assert 'name="token"' in (await http.get("/dashboard", headers=with_cookie(session))).text


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}],
)
async def test_a_login_posted_from_another_site_is_refused_even_with_the_right_token(http, headers):
    response = await http.post("/dashboard/login", data={"token": TOKEN}, headers=headers)
    assert response.status_code == 403 and "set-cookie" not in response.headers


async def test_a_login_from_the_dashboards_own_page_is_accepted(http):
    origin = str(http.base_url).rstrip("/")
    headers = {"Origin": origin, "Sec-Fetch-Site": "same-origin"}
    assert (await http.post("/dashboard/login", data={"token": TOKEN}, headers=headers)).status_code == 303


async def test_signing_out_clears_the_cookie(http):
    session = await sign_in(http)
    response = await http.post("/dashboard/logout", headers=with_cookie(session))
    assert response.status_code == 303
    assert SimpleCookie(response.headers["set-cookie"])[SESSION_COOKIE].value == ""


async def test_pages_forbid_scripts_framing_caching_and_anything_from_elsewhere(http):
    session = await sign_in(http)
    for response in (await http.get("/dashboard"), await http.get("/dashboard", headers=with_cookie(session))):
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "style-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "script-src" not in policy, "no script may run at all"
        assert response.headers["cache-control"] == "no-store" and response.headers["x-frame-options"] == "DENY"
        assert "<script" not in response.text and "http://" not in response.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    css = await http.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert (await http.get("/dashboard/static/..%2Fdata.py")).status_code == 404


# --- what the page shows ---


async def test_each_tables_numbers_are_the_ledgers(http, ledger, clock):
    today = clock.now.date()
    await spend(ledger, ANN, MODEL, 1_500, 0.3)
    await spend(ledger, ANN, "Qwen/QwQ-32B", 700, 2.0)
    await spend(ledger, BOB, MODEL, 4_000, 0.9)
    await ledger.set_user_limit(BOB, 8_000)
    await ledger.store.record_refusal(today, Refusal.BUDGET)
    await ledger.store.record_refusal(today, Refusal.BUDGET)
    await ledger.store.record_refusal(today, Refusal.BAD_INPUT)
    page = await http.get("/dashboard", headers=with_cookie(await sign_in(http)))
    shown = page_tables(page.text)
    assert shown == await ledger_tables(ledger, ledger.store, QUOTAS, today)
    assert shown["top-people"] == [(BOB, 4_000, 8_000, "50%"), (ANN, 2_200, 50_000, "4%")]
    assert shown["refusals"] == [("budget", 2), ("bad input", 1)]
    assert [row[:2] for row in shown["latency"]] == [("Qwen/QwQ-32B", 1), (MODEL, 2)]
    assert shown["tokens-by-day"][0] == (str(today), 700, 5_500, 6_200), "today first: QwQ, Llama, the total"
    assert 'title="Qwen/QwQ-32B">QwQ-32B</th>' in page.text, "a model's column is headed by its short name"
    for chart in CHARTS:
        assert (
            page.text.count(f'<section id="{chart}"') == 1
            and "<svg" in page.text.split(f'id="{chart}"')[1].split("</section>")[0]
        )


async def test_the_page_shows_the_same_numbers_on_postgresql(postgres_url, client, clock):
    ledger = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000)
    try:
        await spend(ledger, ANN, MODEL, 1_500, 0.3)
        await spend(ledger, BOB, "Qwen/QwQ-32B", 4_000, 2.0)
        await ledger.set_user_limit(BOB, 8_000)
        await ledger.store.record_refusal(clock.now.date(), Refusal.RATE_LIMIT)
        dashboard = Dashboard(SecretStr(TOKEN), ledger, ledger.store, QUOTAS, user_daily_tokens=50_000, clock=clock)
        async for http in serve(ledger, client, dashboard):
            page = await http.get("/dashboard", headers=with_cookie(await sign_in(http)))
            shown = page_tables(page.text)
            assert shown == await ledger_tables(ledger, ledger.store, QUOTAS, clock.now.date())
        assert shown["top-people"] == [(BOB, 4_000, 8_000, "50%"), (ANN, 1_500, 50_000, "3%")]
        assert shown["refusals"] == [("rate limit", 1)] and len(shown["latency"]) == 2
    finally:
        await ledger.close()


async def test_a_chosen_day_shows_that_day_and_the_13_before(http, ledger, clock):
    session = await sign_in(http)
    today = clock.now.date()
    page = await http.get(f"/dashboard?day={today - timedelta(days=3)}", headers=with_cookie(session))
    assert page.status_code == 200 and f'value="{today - timedelta(days=3)}"' in page.text
    assert f"{today - timedelta(days=16)} to {today - timedelta(days=3)}" in page.text
    assert page_tables(page.text) == await ledger_tables(ledger, ledger.store, QUOTAS, today - timedelta(days=3))
    assert (await http.get("/dashboard?day=tomorrow", headers=with_cookie(session))).status_code == 400
    assert (await http.get(f"/dashboard?day={today + timedelta(days=1)}", headers=with_cookie(session))).status_code == 400


async def test_the_page_reloads_itself_every_30_seconds_and_fits_a_phone(http):
    page = await http.get("/dashboard", headers=with_cookie(await sign_in(http)))
    assert '<meta http-equiv="refresh" content="30">' in page.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text


async def test_no_persons_message_text_reaches_the_page(http, ledger, client):
    secret = "my salary is 123456 and my password is hunter2"
    config = ServiceConfig(model=MODEL, vision_model=MODEL, max_tokens=256)
    service = Service(client, ledger, QUOTAS, config, httpx.AsyncClient(), store=ledger.store)
    assert (await service.handle(Request(user=ANN, text=f"ask {secret}"))).outcome == "ok"
    assert (await service.handle(Request(user=ANN, text="translate"))).outcome == "usage"
    page = await http.get("/dashboard", headers=with_cookie(await sign_in(http)))
    assert ANN in page.text and "hunter2" not in page.text and "salary" not in page.text


# --- what the service records for it ---


async def test_the_service_counts_each_refusal_by_reason_and_each_answers_latency(ledger, client):
    config = ServiceConfig(model=MODEL, vision_model=MODEL, max_tokens=256, user_requests_per_minute=3)
    service = Service(client, ledger, QUOTAS, config, httpx.AsyncClient(), store=ledger.store)
    outcomes = [
        (await service.handle(Request(user=ANN, text=text))).outcome for text in ("ask one", "ask two", "summarize 5 A text.")
    ]
    assert outcomes == ["ok", "ok", "ok"]
    assert (await service.handle(Request(user=ANN, text="ask four"))).outcome == "refused"  # the rate limit
    assert (await service.handle(Request(user=BOB, text="classify onlyone text"))).outcome == "usage"
    assert (await service.handle(Request(user=BOB, text="help"))).outcome == "ok"
    await ledger.set_user_limit(BOB, 10)
    assert (await service.handle(Request(user=BOB, text="ask anything"))).outcome == "refused"  # the budget
    today = datetime.now(UTC).date()
    assert await ledger.store.refusals(today) == {"bad input": 1, "budget": 1, "rate limit": 1}
    latencies = await ledger.answer_latencies(today)
    assert list(latencies) == [MODEL] and sum(latencies[MODEL].values()) == 3, "two chats and an agent answered"


# --- /api/usage ---


async def test_the_usage_api_wants_the_bearer_token(http):
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
        response = await http.get("/api/usage", headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", headers


async def test_the_usage_api_gives_iobot_usage_json_rows_for_the_days_asked(http, ledger, clock):
    await spend(ledger, ANN, MODEL, 300, 0.2)
    await spend(ledger, BOB, MODEL, 500, 0.2)
    await ledger.set_user_limit(BOB, 9_000)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    today = clock.now.date()
    rows = (await http.get("/api/usage", headers=auth)).json()
    assert rows == [json.loads(row) for row in await ledger.usage_json(day=today)]
    assert [(row["user"], row["total_tokens"], row["user_limit"]) for row in rows] == [(BOB, 500, 9_000), (ANN, 300, 50_000)]
    spanned = (await http.get(f"/api/usage?day={today + timedelta(days=2)}&days=3", headers=auth)).json()
    assert spanned == rows, "two empty days after today"
    assert (await http.get(f"/api/usage?day={today - timedelta(days=1)}", headers=auth)).json() == []
    for query in ("days=0", "days=32", "days=x", "day=2025-13-01"):
        assert (await http.get(f"/api/usage?{query}", headers=auth)).status_code == 400, query


def test_dashboard_static_files_ship_with_the_package():
    from importlib import resources

    static = resources.files("bots.dashboard").joinpath("static")
    assert {path.name for path in static.iterdir()} >= {"dashboard.css", "icon.svg"}
    assert Path(str(static)).is_dir()
