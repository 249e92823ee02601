"""`GET /dashboard` on a ledger of a million usage rows: the whole page, its data read in that one request.

Run from the project root: `python benchmarks/dashboard.py`. Prints one JSON line. Two ledgers of ROWS rows
(one row per person, model and UTC day, as the ledger keeps them), each served by the real HTTP app with
the ledger opened as the service opens it:
- spread: ROWS rows over SPREAD_DAYS days of history (a quarter: about 11,000 rows a day), the headline;
- dense: the same ROWS rows all inside the page's 14 days (71,000 rows a day): the page's worst case.
For each, the median of RUNS signed-in `GET /dashboard` requests (page_ms), beside two baselines in the
same run: `GET /healthz` on the same server (the HTTP floor) and the page's own SQL run bare through
sqlite3 on the same file (the data floor), with their ratios. Target: the spread page under TARGET_MS.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from pydantic import SecretStr

from bots.dashboard import Dashboard
from bots.dashboard.access import SESSION_COOKIE
from bots.http import HealthState, make_http_app, start_http_server
from core.client import IOClient
from core.ledger import SQLiteLedger
from core.ledger import sqlite as ledger_sql
from core.ledger import sqlite_store as store_sql
from core.ledger.latency import bucket_of
from core.ledger.sqlite import MIGRATIONS, PRAGMAS
from core.quotas import load_quota_table

ROWS = 1_000_000
SPREAD_DAYS = 90
PAGE_DAYS = 14
MODELS_PER_PERSON = 3
RUNS = 15
TARGET_MS = 200.0
TOKEN = "benchmark-admin-token-0123456789"
QUOTAS = load_quota_table()
MODELS = [row.name for row in QUOTAS.chat_models()][:10]
# What the ledger's settles keep in model_spend, for rows written straight into usage.
ROLL_UP_MODEL_SPEND = (
    "INSERT INTO model_spend (day, model, tokens) SELECT day, model, SUM(total_tokens + interrupted_tokens) FROM usage"
    " GROUP BY day, model"
)


def seed(path: Path, days: int) -> None:
    """ROWS usage rows over the `days` days up to today, some budgets, refusals and latencies, in the ledger's schema."""
    today = datetime.now(UTC).date()
    per_day = ROWS // days
    people = per_day // MODELS_PER_PERSON
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for pragma in PRAGMAS:
            db.execute(pragma)
        for number, script in enumerate(MIGRATIONS, start=1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        db.execute("BEGIN")
        for back in range(days):
            day = (today - timedelta(days=back)).isoformat()
            db.executemany(
                "INSERT INTO usage (day, user, model, prompt_tokens, completion_tokens, total_tokens, requests,"
                " estimated_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (day, f"slack:T0001:U{person:07d}", MODELS[(person + k) % len(MODELS)], 300, 200, 500 + person % 1200, 2, 0)
                    for person in range(people)
                    for k in range(MODELS_PER_PERSON)
                ),
            )
            db.executemany(
                "INSERT INTO answer_latency (day, model, bound_ms, answers) VALUES (?, ?, ?, ?)",
                ((day, model, bucket_of(seconds), 50) for model in MODELS for seconds in (0.4, 0.8, 1.5, 3.0, 9.0)),
            )
            db.executemany(
                "INSERT INTO refusals (day, reason, requests) VALUES (?, ?, ?)",
                ((day, reason, 10) for reason in ("budget", "rate limit", "bad input")),
            )
        db.execute(ROLL_UP_MODEL_SPEND)
        db.executemany(
            "INSERT INTO user_limits (user, tokens) VALUES (?, ?)",
            ((f"slack:T0001:U{p:07d}", 90_000) for p in range(0, 3_000, 3)),
        )
        db.execute("COMMIT")
        db.execute("ANALYZE")


def bare_sql_ms(path: Path) -> float:
    """The page's queries run bare through sqlite3: 14 days of model totals, the top users, refusals, latencies."""
    today = datetime.now(UTC).date()
    with closing(sqlite3.connect(path)) as db:
        started = time.perf_counter()
        for back in range(PAGE_DAYS):
            day = (today - timedelta(days=back)).isoformat()
            db.execute(ledger_sql.SPENT_BY_MODEL, (day,)).fetchall()
            db.execute(ledger_sql.RESERVED_BY_MODEL, (day,)).fetchall()
        db.execute(ledger_sql.TOP_USERS, (50_000, today.isoformat(), 10)).fetchall()
        db.execute(store_sql.REFUSALS, (today.isoformat(),)).fetchall()
        db.execute(ledger_sql.ANSWER_LATENCIES, (today.isoformat(),)).fetchall()
        return (time.perf_counter() - started) * 1000


async def measure(path: Path) -> dict[str, float]:
    ledger = await SQLiteLedger.open(str(path), user_daily_tokens=50_000)
    client = IOClient("http://127.0.0.1:9", "unused")
    dashboard = Dashboard(SecretStr(TOKEN), ledger, ledger.store, QUOTAS, user_daily_tokens=50_000)
    app = make_http_app(HealthState(ledger, client, QUOTAS), dashboard=dashboard)
    runner, port = await start_http_server(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            login = await http.post("/dashboard/login", data={"token": TOKEN})
            cookie = {"Cookie": f"{SESSION_COOKIE}={login.cookies[SESSION_COOKIE]}"}
            http.cookies.clear()
            page_ms, health_ms, bare_ms = [], [], []
            for _ in range(RUNS):  # taking turns, so that the machine's load reaches all three alike
                started = time.perf_counter()
                response = await http.get("/dashboard", headers=cookie)
                page_ms.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200 and 'id="latency"' in response.text
                started = time.perf_counter()
                assert (await http.get("/healthz")).status_code == 200
                health_ms.append((time.perf_counter() - started) * 1000)
                bare_ms.append(await asyncio.to_thread(bare_sql_ms, path))
    finally:
        await runner.cleanup()
        await client.aclose()
        await ledger.close()
    page, health, bare = (statistics.median(values) for values in (page_ms, health_ms, bare_ms))
    return {
        "page_ms": round(page, 1),
        "page_max_ms": round(max(page_ms), 1),
        "healthz_ms": round(health, 1),
        "bare_sql_ms": round(bare, 1),
        "ratio_to_bare_sql": round(page / bare, 2),
    }


def main() -> None:
    figures: dict[str, object] = {"rows": ROWS, "runs": RUNS}
    for name, days in (("spread", SPREAD_DAYS), ("dense", PAGE_DAYS)):
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "ledger.sqlite3"
            started = time.perf_counter()
            seed(path, days)
            seeded_s = time.perf_counter() - started
            figures[name] = {"days": days, "rows_a_day": ROWS // days, **asyncio.run(measure(path)), "seed_s": round(seeded_s, 1)}
    spread = figures["spread"]
    assert isinstance(spread, dict)
    figures["target_ms"] = TARGET_MS
    figures["target_met"] = spread["page_ms"] < TARGET_MS
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
