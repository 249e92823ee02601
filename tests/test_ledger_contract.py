"""The `Ledger` contract: what every implementation must do, run on each of them through one fixture.

Limits that hold under concurrency, settle and release, idempotency keys, UTC days, the refusals'
messages and per-person budgets. A new implementation adds one branch to `open_ledger` (and its name
to `IMPLEMENTATIONS`) and gets the whole suite. What is particular to the SQLite file (its owner
lock, crashes, migrations, pruning) is in tests/test_ledger.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.ledger import (
    BudgetExceeded,
    DuplicateRequest,
    Ledger,
    LedgerError,
    ModelQuotaExceeded,
    PersonTotal,
    QuotaExceeded,
    Reservation,
    SQLiteLedger,
    UsageRow,
    next_reset,
)
from core.ledger.latency import bucket_of, percentile
from core.ledger.postgres import PostgresLedger
from tests.conftest import postgres_database

IMPLEMENTATIONS = ["sqlite", "postgresql"]
LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
QWQ = "Qwen/QwQ-32B"
R1 = "deepseek-ai/DeepSeek-R1"
ANN = "slack:T1:U1"
BOB = "discord:42"

OpenLedger = Callable[..., Awaitable[Ledger]]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2025, 3, 14, 20, 48, tzinfo=UTC))


@pytest.fixture(params=IMPLEMENTATIONS)
async def open_ledger(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[OpenLedger]:
    """Opens a ledger of one implementation and closes it afterwards.

    Options every implementation takes: `user_daily_tokens` (50,000 unless told), `reservation_ttl`
    and `clock` (the test clock unless told).
    """
    opened: list[Ledger] = []
    async with AsyncExitStack() as stack:
        postgres_url = await stack.enter_async_context(postgres_database()) if request.param == "postgresql" else ""

        async def _open(**options: Any) -> Ledger:
            options.setdefault("user_daily_tokens", 50_000)
            options.setdefault("clock", clock)
            ledger: Ledger
            if request.param == "postgresql":
                ledger = await PostgresLedger.open(postgres_url, **options)
            else:
                ledger = await SQLiteLedger.open(str(tmp_path / "ledger.sqlite3"), **options)
            opened.append(ledger)
            return ledger

        yield _open
        for ledger in opened:
            await ledger.close()


@pytest.fixture
async def ledger(open_ledger: OpenLedger) -> Ledger:
    return await open_ledger()


async def spend(ledger: Ledger, user: str, model: str, tokens: int) -> None:
    """Settle `tokens` of use straight away (to fill a quota before the real test)."""
    reservation = await ledger.reserve(user=user, model=model, tokens=0, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=tokens, completion_tokens=0, estimated=False)


async def many_calls(ledger: Ledger, users: list[str], model: str, model_limit: int | None) -> list[Reservation | QuotaExceeded]:
    """200 concurrent calls of 1,000 tokens each, round-robin over `users`: a Reservation or the refusal."""

    async def call(n: int) -> Reservation | QuotaExceeded:
        try:
            user = users[n % len(users)]
            reservation = await ledger.reserve(user=user, model=model, tokens=1_000, model_limit=model_limit)
        except QuotaExceeded as refusal:
            return refusal
        for _ in range(n % 4):  # let the other calls run between reserve and settle
            await asyncio.sleep(0)
        await ledger.settle(reservation, prompt_tokens=600, completion_tokens=400, estimated=False)
        return reservation

    return await asyncio.gather(*(call(n) for n in range(200)))


def settled_total(rows: list[UsageRow], *, model: str | None = None, user: str | None = None) -> int:
    return sum(row.total_tokens for row in rows if model in (None, row.model) and user in (None, row.user))


# --- reserve, settle, release ---


async def test_reserve_then_settle_records_what_the_api_reported(ledger: Ledger) -> None:
    reservation = await ledger.reserve(user=ANN, model=LLAMA, tokens=1_200, model_limit=500_000)
    assert (reservation.user, reservation.model, reservation.tokens) == (ANN, LLAMA, 1_200)
    assert reservation.day == date(2025, 3, 14)
    assert await ledger.used_today(user=ANN) == 1_200  # reserved counts
    await ledger.settle(reservation, prompt_tokens=300, completion_tokens=500, estimated=False)

    assert await ledger.used_today(user=ANN) == 800
    assert await ledger.used_today(model=LLAMA, user=ANN) == 800
    assert await ledger.used_today(model=QWQ) == 0
    [row] = await ledger.usage()
    assert row.as_json() == {
        "day": "2025-03-14",
        "user": ANN,
        "model": LLAMA,
        "prompt_tokens": 300,
        "completion_tokens": 500,
        "total_tokens": 800,
        "requests": 1,
        "estimated_tokens": 0,
        "interrupted_tokens": 0,
        "interrupted_requests": 0,
    }
    assert await ledger.model_totals() == {LLAMA: 800}


async def test_an_estimated_settlement_is_flagged(ledger: Ledger) -> None:
    reservation = await ledger.reserve(user=ANN, model=LLAMA, tokens=900, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=250, completion_tokens=150, estimated=True)
    await spend(ledger, ANN, LLAMA, 100)
    [row] = await ledger.usage(user=ANN)
    assert (row.total_tokens, row.requests, row.estimated_tokens) == (500, 2, 400)


async def test_settling_more_than_reserved_is_recorded_and_counts_against_later_reserves(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(user_daily_tokens=5_000)
    reservation = await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=3_000, completion_tokens=1_500, estimated=False)
    assert settled_total(await ledger.usage()) == 4_500
    assert await ledger.used_today(user=ANN) == 4_500
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(user=ANN, model=QWQ, tokens=600, model_limit=None)
    assert refused.value.used == 4_500
    await ledger.reserve(user=ANN, model=QWQ, tokens=500, model_limit=None)


async def test_release_frees_the_tokens(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(user_daily_tokens=2_000)
    reservation = await ledger.reserve(user=ANN, model=LLAMA, tokens=2_000, model_limit=None)
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(user=ANN, model=LLAMA, tokens=1, model_limit=None)
    await ledger.release(reservation)
    await ledger.release(reservation)  # twice: nothing more happens
    assert await ledger.used_today(user=ANN) == 0
    await ledger.reserve(user=ANN, model=LLAMA, tokens=2_000, model_limit=None)
    assert await ledger.usage() == []


# --- concurrency: never past a limit ---


async def test_concurrent_calls_never_pass_a_nearly_spent_model_quota(ledger: Ledger) -> None:
    await ledger.set_user_limit("console:bulk", 10**9)
    await spend(ledger, "console:bulk", LLAMA, 490_500)  # 9,500 left: room for exactly 9 calls
    users = [f"discord:{n}" for n in range(50)]
    outcomes = await many_calls(ledger, users, LLAMA, model_limit=500_000)

    assert sum(isinstance(outcome, Reservation) for outcome in outcomes) == 9
    assert all(isinstance(outcome, (Reservation, ModelQuotaExceeded)) for outcome in outcomes)
    assert settled_total(await ledger.usage(), model=LLAMA) == 499_500
    assert await ledger.used_today(model=LLAMA) == 499_500


async def test_concurrent_calls_never_pass_a_nearly_spent_budget(ledger: Ledger) -> None:
    await spend(ledger, ANN, QWQ, 45_500)  # 4,500 of 50,000 left: room for exactly 4 calls
    outcomes = await many_calls(ledger, [ANN], LLAMA, model_limit=None)

    assert sum(isinstance(outcome, Reservation) for outcome in outcomes) == 4
    assert all(isinstance(outcome, (Reservation, BudgetExceeded)) for outcome in outcomes)
    assert settled_total(await ledger.usage(), user=ANN) == 49_500
    assert await ledger.used_today(user=ANN) == 49_500


async def test_concurrent_calls_never_pass_either_limit_when_both_are_nearly_spent(ledger: Ledger) -> None:
    await ledger.set_user_limit("console:bulk", 10**9)
    await spend(ledger, "console:bulk", LLAMA, 487_500)  # room for 12 calls on the model
    users = ["slack:T1:A", "slack:T1:B", "discord:C", "discord:D"]
    for user, used in zip(users, (47_500, 46_500, 40_000, 40_000)):  # room for 2, 3, 10 and 10 calls
        await spend(ledger, user, R1, used)
    outcomes = await many_calls(ledger, users, LLAMA, model_limit=500_000)

    assert sum(isinstance(outcome, Reservation) for outcome in outcomes) == 12
    rows = await ledger.usage()
    assert settled_total(rows, model=LLAMA) == 499_500
    for user in users:
        assert settled_total(rows, user=user) <= 50_000
        assert await ledger.used_today(user=user) == settled_total(rows, user=user)


# --- calls cancelled or forgotten ---


async def test_a_cancelled_caller_does_not_disturb_the_others(ledger: Ledger) -> None:
    calls = [
        asyncio.create_task(ledger.reserve(user=f"discord:{n}", model=LLAMA, tokens=100, model_limit=None)) for n in range(10)
    ]
    await asyncio.sleep(0)
    calls[3].cancel()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes[3], asyncio.CancelledError)
    assert all(isinstance(outcome, Reservation) for n, outcome in enumerate(outcomes) if n != 3)
    # The cancelled call's reservation was written all the same and waits for the TTL. On PostgreSQL its write
    # goes on without its caller, so it may land a moment after the others return.
    for _ in range(100):
        if await ledger.used_today(model=LLAMA) == 1_000:
            break
        await asyncio.sleep(0.02)
    assert await ledger.used_today(model=LLAMA) == 1_000


async def test_stale_reservations_expire(open_ledger: OpenLedger, clock: Clock) -> None:
    ledger = await open_ledger(user_daily_tokens=1_000, reservation_ttl=60)
    forgotten = await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=None)
    clock.advance(seconds=30)
    assert await ledger.expire_stale() == 0
    clock.advance(seconds=31)
    assert await ledger.expire_stale() == 1
    assert await ledger.used_today(user=ANN) == 0

    # A call that outlived its reservation is still charged, once.
    await ledger.settle(forgotten, prompt_tokens=100, completion_tokens=100, estimated=False)
    assert await ledger.used_today(user=ANN) == 200

    # reserve expires stale reservations itself, so a forgotten one never blocks a person for long.
    await ledger.reserve(user=BOB, model=LLAMA, tokens=1_000, model_limit=None)
    clock.advance(seconds=61)
    await ledger.reserve(user=BOB, model=LLAMA, tokens=1_000, model_limit=None)
    assert await ledger.used_today(user=BOB) == 1_000


# --- idempotency ---


async def test_the_same_idempotency_key_charges_once(ledger: Ledger) -> None:
    reservation = await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=None, idempotency_key="Ev01")
    with pytest.raises(DuplicateRequest) as duplicate:
        await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=None, idempotency_key="Ev01")
    assert duplicate.value.key == "Ev01"
    await ledger.settle(reservation, prompt_tokens=400, completion_tokens=100, estimated=False)
    with pytest.raises(DuplicateRequest):
        await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=None, idempotency_key="Ev01")
    [row] = await ledger.usage()
    assert (row.requests, row.total_tokens) == (1, 500)


async def test_many_concurrent_deliveries_of_one_event_reserve_once(ledger: Ledger) -> None:
    async def deliver() -> Reservation | None:
        try:
            return await ledger.reserve(user=ANN, model=LLAMA, tokens=100, model_limit=None, idempotency_key="Ev02")
        except DuplicateRequest:
            return None

    outcomes = await asyncio.gather(*(deliver() for _ in range(20)))
    assert sum(outcome is not None for outcome in outcomes) == 1
    assert await ledger.used_today(user=ANN) == 100


async def test_a_refused_reserve_leaves_the_key_free_and_a_released_one_keeps_it(ledger: Ledger) -> None:
    with pytest.raises(ModelQuotaExceeded):
        await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=500, idempotency_key="Ev03")
    fallback = await ledger.reserve(user=ANN, model=QWQ, tokens=1_000, model_limit=None, idempotency_key="Ev03")
    await ledger.release(fallback)
    with pytest.raises(DuplicateRequest):
        await ledger.reserve(user=ANN, model=QWQ, tokens=1_000, model_limit=None, idempotency_key="Ev03")


# --- UTC days ---


async def test_a_clock_past_midnight_utc_starts_a_fresh_day_for_both_limits(open_ledger: OpenLedger, clock: Clock) -> None:
    clock.now = datetime(2025, 3, 14, 23, 59, 30, tzinfo=UTC)
    ledger = await open_ledger(user_daily_tokens=1_000)
    await spend(ledger, ANN, LLAMA, 1_000)
    late = await ledger.reserve(user=BOB, model=LLAMA, tokens=1_000, model_limit=2_000)
    with pytest.raises(BudgetExceeded) as over_budget:
        await ledger.reserve(user=ANN, model=QWQ, tokens=1, model_limit=None)
    assert over_budget.value.resets_at == datetime(2025, 3, 15, tzinfo=UTC)
    with pytest.raises(ModelQuotaExceeded):
        await ledger.reserve(user="discord:7", model=LLAMA, tokens=1, model_limit=2_000)

    clock.now = datetime(2025, 3, 15, 0, 0, 5, tzinfo=UTC)
    await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=2_000)
    await ledger.reserve(user="discord:7", model=LLAMA, tokens=1_000, model_limit=2_000)
    # A call that began before midnight is charged to the day it began.
    await ledger.settle(late, prompt_tokens=500, completion_tokens=500, estimated=False)
    assert settled_total(await ledger.usage(day=date(2025, 3, 14))) == 2_000
    assert await ledger.usage() == []
    assert await ledger.used_today(model=LLAMA) == 2_000  # the two reservations of the new day


def test_next_reset_is_the_next_midnight_utc() -> None:
    assert next_reset(datetime(2025, 3, 14, 20, 48, tzinfo=UTC)) == datetime(2025, 3, 15, tzinfo=UTC)
    assert next_reset(datetime(2025, 3, 15, tzinfo=UTC)) == datetime(2025, 3, 16, tzinfo=UTC)
    eastern = datetime(2025, 3, 14, 21, 0, tzinfo=UTC).astimezone(ZoneInfo("America/New_York"))
    assert next_reset(eastern) == datetime(2025, 3, 15, tzinfo=UTC)
    with pytest.raises(ValueError):
        next_reset(datetime(2025, 3, 14))


# --- messages ---


async def test_refusals_say_what_was_used_the_limit_and_when_it_resets(ledger: Ledger) -> None:
    await spend(ledger, ANN, QWQ, 49_800)
    with pytest.raises(BudgetExceeded) as over_budget:
        await ledger.reserve(user=ANN, model=LLAMA, tokens=1_200, model_limit=None)
    assert str(over_budget.value) == (
        "You have used 49,800 of your 50,000 tokens today; this request needs about 1,200 more. "
        "Your budget resets at 00:00 UTC (in 3 h 12 min)."
    )
    assert (over_budget.value.user, over_budget.value.used, over_budget.value.limit) == (ANN, 49_800, 50_000)
    assert over_budget.value.user_message == str(over_budget.value)

    await spend(ledger, BOB, LLAMA, 29_000)
    with pytest.raises(ModelQuotaExceeded) as over_quota:
        await ledger.reserve(user=BOB, model=LLAMA, tokens=2_000, model_limit=30_000)
    assert str(over_quota.value) == (
        "Llama-3.3-70B-Instruct has used 29,000 of its 30,000 tokens for today; this request needs about 2,000 "
        "more. It resets at 00:00 UTC (in 3 h 12 min)."
    )
    assert (over_quota.value.model, over_quota.value.resets_at) == (LLAMA, datetime(2025, 3, 15, tzinfo=UTC))


# --- limits ---


async def test_a_user_limit_override_is_set_used_and_cleared(ledger: Ledger) -> None:
    assert await ledger.user_limit(ANN) == 50_000
    await ledger.set_user_limit(ANN, 1_000)
    assert await ledger.user_limit(ANN) == 1_000
    assert await ledger.user_limits() == {ANN: 1_000}
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(user=ANN, model=LLAMA, tokens=1_001, model_limit=None)
    assert refused.value.limit == 1_000
    await ledger.set_user_limit(ANN, None)
    assert await ledger.user_limits() == {}
    await ledger.reserve(user=ANN, model=LLAMA, tokens=1_001, model_limit=None)
    with pytest.raises(ValueError):
        await ledger.set_user_limit(ANN, -1)


# --- closing ---


async def test_a_closed_ledger_says_so(ledger: Ledger) -> None:
    await ledger.close()
    await ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        await ledger.reserve(user=ANN, model=LLAMA, tokens=1, model_limit=None)
    with pytest.raises(LedgerError, match="closed"):
        await ledger.usage()


# --- what the operator's dashboard reads ---


async def test_each_answer_settled_with_its_time_is_counted_in_its_models_latencies(ledger: Ledger, clock: Clock) -> None:
    for seconds in (0.2, 0.2, 0.25, 1.0, 9.0):
        reservation = await ledger.reserve(user=ANN, model=LLAMA, tokens=100, model_limit=None)
        await ledger.settle(reservation, prompt_tokens=50, completion_tokens=50, estimated=False, seconds=seconds)
    reservation = await ledger.reserve(user=BOB, model=QWQ, tokens=100, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=50, completion_tokens=50, estimated=True, seconds=3.0)
    untimed = await ledger.reserve(user=BOB, model=QWQ, tokens=100, model_limit=None)
    await ledger.settle(untimed, prompt_tokens=50, completion_tokens=50, estimated=False)  # no time: not counted

    latencies = await ledger.answer_latencies()
    assert latencies == {
        LLAMA: {bucket_of(0.2): 2, bucket_of(0.25): 1, bucket_of(1.0): 1, bucket_of(9.0): 1},
        QWQ: {bucket_of(3.0): 1},
    }
    assert 0.2 <= percentile(latencies[LLAMA], 0.5) <= 0.25 * 1.1
    assert 9.0 <= percentile(latencies[LLAMA], 0.95) <= 9.0 * 1.1
    assert await ledger.answer_latencies(clock.now.date() - timedelta(days=1)) == {}


async def test_top_users_are_the_days_biggest_most_first_with_their_budgets(ledger: Ledger, clock: Clock) -> None:
    carl = "console:carl"
    await ledger.set_user_limit(BOB, 9_000)
    await spend(ledger, ANN, LLAMA, 300)
    await spend(ledger, ANN, QWQ, 400)  # ann: 700 over two models
    await spend(ledger, BOB, LLAMA, 2_000)
    await spend(ledger, carl, R1, 50)
    await ledger.reserve(user=carl, model=R1, tokens=5_000, model_limit=None)  # reserved, not settled: not counted

    assert await ledger.top_users() == [
        PersonTotal(BOB, 2_000, 9_000),
        PersonTotal(ANN, 700, 50_000),
        PersonTotal(carl, 50, 50_000),
    ]
    assert await ledger.top_users(count=2) == [PersonTotal(BOB, 2_000, 9_000), PersonTotal(ANN, 700, 50_000)]
    assert await ledger.top_users(day=clock.now.date() - timedelta(days=1)) == []
