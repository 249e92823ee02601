"""The `Store` contract: what every implementation must do, run on each of them through one fixture.

A new implementation adds one branch to `Stores.open` (and its name to `IMPLEMENTATIONS`) and gets the
whole suite. The tests at the end are about the SQLite file itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from core.ledger import CLAIM_SECONDS, LedgerError, MemoryStore, SQLiteLedger, Store, sqlite_store
from core.ledger import sqlite as ledger_module
from core.ledger.postgres import PostgresLedger
from tests.conftest import postgres_database

IMPLEMENTATIONS = ["memory", "sqlite", "postgresql"]
PERSISTENT = ["sqlite", "postgresql"]  # those whose state outlives a close and an open
ANN = "slack:T1:U1"
BOB = "discord:42"


class Clock:
    """A clock the test moves by hand: wall time for the ledger's file, the same in seconds for memory."""

    def __init__(self) -> None:
        self.now = datetime(2025, 3, 14, 20, 48, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.now.timestamp()

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Stores:
    """Opens stores of one implementation, all on one database and the test clock; closes them all.

    The database is the SQLite file at `path`, or, for PostgreSQL, a clean database of the test's own.
    """

    def __init__(self, kind: str, path: Path, clock: Clock) -> None:
        self.kind = kind
        self.path = path
        self.clock = clock
        self._ledgers: list[SQLiteLedger | PostgresLedger] = []
        self._database = AsyncExitStack()
        self._postgres_url: str | None = None

    async def open(self) -> Store:
        if self.kind == "memory":
            return MemoryStore(clock=self.clock.seconds)
        ledger: SQLiteLedger | PostgresLedger
        if self.kind == "postgresql":
            if self._postgres_url is None:
                self._postgres_url = await self._database.enter_async_context(postgres_database())
            ledger = await PostgresLedger.open(self._postgres_url, user_daily_tokens=50_000, clock=self.clock)
        else:
            ledger = await SQLiteLedger.open(str(self.path), user_daily_tokens=50_000, clock=self.clock)
        self._ledgers.append(ledger)
        return ledger.store

    async def close(self) -> None:
        """Close the stores opened so far; the database stays until `drop`."""
        for ledger in self._ledgers:
            await ledger.close()
        self._ledgers.clear()

    async def drop(self) -> None:
        await self.close()
        await self._database.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=IMPLEMENTATIONS)
async def stores(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[Stores]:
    opened = Stores(request.param, tmp_path / "store.sqlite3", clock)
    yield opened
    await opened.drop()


@pytest.fixture
async def store(stores: Stores) -> Store:
    return await stores.open()


# --- claims ---


async def test_of_many_concurrent_claimers_exactly_one_wins_and_a_repeat_loses(store: Store) -> None:
    outcomes = await asyncio.gather(*(store.claim("slack:Ev01") for _ in range(50)))
    assert outcomes.count(True) == 1
    assert await store.claim("slack:Ev01") is False


async def test_a_claim_is_taken_again_once_its_ttl_has_passed_and_repeats_do_not_extend_it(store: Store, clock: Clock) -> None:
    assert await store.claim("discord:m1", ttl=60) is True
    clock.advance(seconds=30)
    assert await store.claim("discord:m1", ttl=60) is False
    clock.advance(seconds=29)
    assert await store.claim("discord:m1", ttl=60) is False
    clock.advance(seconds=2)  # 61 s after the claim; the repeat at 30 s did not move its end
    assert await store.claim("discord:m1", ttl=60) is True
    assert await store.claim("discord:m1", ttl=60) is False


async def test_the_default_ttl_remembers_a_claim_for_a_day(store: Store, clock: Clock) -> None:
    assert await store.claim("slack:Ev02") is True
    clock.advance(seconds=CLAIM_SECONDS - 1)
    assert await store.claim("slack:Ev02") is False
    clock.advance(seconds=2)
    assert await store.claim("slack:Ev02") is True


async def test_distinct_keys_are_claimed_independently(store: Store, clock: Clock) -> None:
    assert await store.claim("slack:Ev03", ttl=10) is True
    assert await store.claim("slack:Ev04", ttl=100) is True
    assert await store.claim("slack:ev03") is True  # keys are compared exactly
    clock.advance(seconds=11)
    assert await store.claim("slack:Ev03", ttl=10) is True
    assert await store.claim("slack:Ev04", ttl=100) is False


# --- followed threads ---


async def test_a_followed_thread_is_followed_and_no_other(store: Store) -> None:
    assert await store.follows_thread("slack:C1:1700000000.000100") is False
    await store.follow_thread("slack:C1:1700000000.000100")
    await store.follow_thread("slack:C1:1700000000.000100")  # twice: still one thread
    assert await store.follows_thread("slack:C1:1700000000.000100") is True
    assert await store.follows_thread("slack:C2:1700000000.000100") is False
    assert await store.follows_thread("slack:C1:1700000000.0001") is False


# --- request rates ---


async def test_a_person_gets_a_burst_of_per_minute_requests_then_waits_and_others_do_not(store: Store) -> None:
    assert [await store.take_request(ANN, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await store.take_request(ANN, 3)
    assert 0 < wait <= 20  # one slot of 60/3 s
    again = await store.take_request(ANN, 3)
    assert 0 < again <= wait  # the refused request was not counted
    assert await store.take_request(BOB, 3) == 0.0


# --- settings ---


async def test_a_setting_is_set_read_overwritten_and_removed(store: Store) -> None:
    assert await store.setting(ANN, "model") is None
    await store.set_setting(ANN, "model", "Qwen/QwQ-32B")
    assert await store.setting(ANN, "model") == "Qwen/QwQ-32B"
    await store.set_setting(ANN, "model", "deepseek-ai/DeepSeek-R1")
    assert await store.setting(ANN, "model") == "deepseek-ai/DeepSeek-R1"
    await store.set_setting(ANN, "model", None)
    assert await store.setting(ANN, "model") is None
    await store.set_setting(ANN, "model", None)  # removing what is unset does nothing
    assert await store.setting(ANN, "model") is None


async def test_settings_of_different_scopes_and_names_are_independent(store: Store) -> None:
    await store.set_setting(ANN, "model", "a")
    await store.set_setting("slack:T1:C1", "model", "b")
    await store.set_setting(ANN, "instructions", "c")
    assert [await store.setting(ANN, "model"), await store.setting("slack:T1:C1", "model")] == ["a", "b"]
    assert await store.setting(ANN, "instructions") == "c"
    assert await store.setting("slack:T1:U", "model") is None  # a prefix of a scope is another scope
    await store.set_setting(ANN, "model", None)
    assert await store.setting("slack:T1:C1", "model") == "b" and await store.setting(ANN, "instructions") == "c"


async def test_unicode_and_long_values_round_trip(store: Store) -> None:
    values = {
        "instructions": "Réponds en français, brièvement. 答えは日本語で。 Emoji 🦀 and quotes ' \" `;` -- DROP",
        "long": "x" * 100_000 + "\n" + "ü" * 10_000,
        "empty": "",
    }
    for name, value in values.items():
        await store.set_setting("discord:チャンネル", name, value)
    for name, value in values.items():
        assert await store.setting("discord:チャンネル", name) == value


# --- refusals ---


async def test_refusals_are_counted_per_day_and_reason(store: Store) -> None:
    today, yesterday = date(2025, 3, 14), date(2025, 3, 13)
    assert await store.refusals(today) == {}
    await asyncio.gather(*(store.record_refusal(today, "budget") for _ in range(5)))
    await store.record_refusal(today, "rate limit")
    await store.record_refusal(yesterday, "budget")
    assert await store.refusals(today) == {"budget": 5, "rate limit": 1}
    assert await store.refusals(yesterday) == {"budget": 1}
    assert await store.refusals(date(2025, 3, 15)) == {}


# --- persistence ---


@pytest.mark.parametrize("kind", PERSISTENT)
async def test_claims_threads_settings_and_refusals_survive_a_restart(kind: str, tmp_path: Path, clock: Clock) -> None:
    stores = Stores(kind, tmp_path / "store.sqlite3", clock)
    try:
        store = await stores.open()
        assert await store.claim("slack:Ev05", ttl=600) is True
        await store.follow_thread("discord:1234")
        await store.set_setting(ANN, "model", "Qwen/QwQ-32B")
        await store.record_refusal(clock.now.date(), "busy")
        await stores.close()

        clock.advance(seconds=60)
        store = await stores.open()
        assert await store.claim("slack:Ev05", ttl=600) is False
        assert await store.follows_thread("discord:1234") is True
        assert await store.setting(ANN, "model") == "Qwen/QwQ-32B"
        assert await store.refusals(clock.now.date()) == {"busy": 1}
        clock.advance(seconds=541)
        assert await store.claim("slack:Ev05", ttl=600) is True  # the claim kept its end across the restart
    finally:
        await stores.drop()


# --- the SQLite file ---


def query(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql, params).fetchall()


@pytest.fixture
async def ledger(tmp_path: Path, clock: Clock) -> AsyncIterator[SQLiteLedger]:
    opened = await SQLiteLedger.open(str(tmp_path / "ledger.sqlite3"), user_daily_tokens=50_000, clock=clock)
    yield opened
    await opened.close()


async def test_each_claim_deletes_a_few_expired_claims_so_the_table_shrinks(
    ledger: SQLiteLedger, tmp_path: Path, clock: Clock
) -> None:
    for n in range(100):
        assert await ledger.store.claim(f"old-{n}", ttl=1)
    clock.advance(seconds=2)
    for n in range(10):
        assert await ledger.store.claim(f"new-{n}")
    [(rows,)] = query(tmp_path / "ledger.sqlite3", "SELECT COUNT(*) FROM claims")
    assert rows == 100 - 10 * sqlite_store.PRUNE_PER_WRITE + 10 < 100
    assert query(tmp_path / "ledger.sqlite3", "SELECT COUNT(*) FROM claims WHERE key LIKE 'new-%'") == [(10,)]


async def test_a_thread_nobody_followed_for_the_retention_is_forgotten(ledger: SQLiteLedger, clock: Clock) -> None:
    await ledger.store.follow_thread("slack:C1:1.0")
    await ledger.store.follow_thread("slack:C1:2.0")
    clock.advance(days=sqlite_store.THREAD_RETENTION.days - 1)
    await ledger.store.follow_thread("slack:C1:2.0")  # followed again: its time starts over
    clock.advance(days=2)
    assert await ledger.store.follows_thread("slack:C1:1.0") is False
    assert await ledger.store.follows_thread("slack:C1:2.0") is True


async def test_settings_set_beside_the_service_reach_it_but_only_the_owner_counts_requests(
    ledger: SQLiteLedger, tmp_path: Path, clock: Clock
) -> None:
    beside = await SQLiteLedger.open(str(tmp_path / "ledger.sqlite3"), user_daily_tokens=50_000, clock=clock, owner=False)
    try:
        assert await ledger.store.setting("slack:T1:C1", "instructions") is None  # the owner remembers this read
        await beside.store.set_setting("slack:T1:C1", "instructions", "Answer in haiku.")
        assert await ledger.store.setting("slack:T1:C1", "instructions") == "Answer in haiku."
        await beside.store.set_setting("slack:T1:C1", "instructions", None)
        assert await ledger.store.setting("slack:T1:C1", "instructions") is None
        assert await ledger.store.claim("slack:Ev06") is True
        assert await beside.store.claim("slack:Ev06") is False  # one file, one set of claims
        with pytest.raises(LedgerError, match="process serving requests"):
            await beside.store.take_request(ANN, 10)
    finally:
        await beside.close()


async def test_the_owner_remembers_settings_it_read_or_wrote_and_still_answers_beyond_its_memory(
    ledger: SQLiteLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "SETTINGS_CACHED", 3)
    for n in range(6):
        await ledger.store.set_setting(f"slack:T1:U{n}", "model", f"model-{n}")
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as db:  # behind the owner's back: unseen while remembered
        db.execute("UPDATE settings SET value = 'changed' WHERE scope IN ('slack:T1:U0', 'slack:T1:U5')")
        db.commit()
    assert await ledger.store.setting("slack:T1:U5", "model") == "model-5"  # remembered: no trip to the file
    assert await ledger.store.setting("slack:T1:U0", "model") == "changed"  # dropped from memory: read again
    assert [await ledger.store.setting(f"slack:T1:U{n}", "model") for n in range(1, 5)] == [f"model-{n}" for n in range(1, 5)]


async def test_a_closed_ledgers_store_says_so(ledger: SQLiteLedger) -> None:
    await ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        await ledger.store.claim("slack:Ev07")
    with pytest.raises(LedgerError, match="closed"):
        await ledger.store.setting(ANN, "model")
    with pytest.raises(LedgerError, match="closed"):
        await ledger.store.take_request(ANN, 10)


async def test_a_ledger_from_before_the_store_is_migrated_and_keeps_its_usage(tmp_path: Path, clock: Clock) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    store_migration = ledger_module.MIGRATIONS.index(sqlite_store.MIGRATION)
    with closing(sqlite3.connect(path, isolation_level=None)) as old:  # the schema and a settled call, as iobot wrote them then
        for number, script in enumerate(ledger_module.MIGRATIONS[:store_migration], start=1):
            old.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        old.execute(
            "INSERT INTO usage (day, user, model, prompt_tokens, completion_tokens, total_tokens, requests, estimated_tokens)"
            " VALUES (?, ?, 'm', 7, 3, 10, 1, 0)",
            (clock.now.date().isoformat(), ANN),
        )
    assert query(tmp_path / "ledger.sqlite3", "PRAGMA user_version") == [(store_migration,)]

    ledger = await SQLiteLedger.open(path, user_daily_tokens=50_000, clock=clock)
    try:
        assert await ledger.used_today(user=ANN) == 10 and await ledger.model_totals() == {"m": 10}
        assert await ledger.store.claim("slack:Ev08") is True
        await ledger.store.set_setting(ANN, "model", "m")
        assert await ledger.store.setting(ANN, "model") == "m"
    finally:
        await ledger.close()
    assert query(tmp_path / "ledger.sqlite3", "PRAGMA user_version") == [(len(ledger_module.MIGRATIONS),)]


async def test_the_store_queries_use_indexes(ledger: SQLiteLedger, tmp_path: Path) -> None:
    queries = [
        sqlite_store.FORGET_CLAIMS,
        sqlite_store.FOLLOWS,
        sqlite_store.FORGET_THREADS,
        sqlite_store.SETTING,
        sqlite_store.REMOVE_SETTING,
        sqlite_store.REFUSALS,
    ]
    for sql in queries:
        steps = query(tmp_path / "ledger.sqlite3", "EXPLAIN QUERY PLAN " + sql, ("x",) * sql.count("?"))
        plan = " ".join(step[3] for step in steps)
        assert plan.startswith("SEARCH") and "SCAN" not in plan and "TEMP B-TREE" not in plan, (sql, plan)
