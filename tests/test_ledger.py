"""The SQLite ledger's own guarantees: one owner per file, crash safety, keys kept across restarts, schema.

What every ledger must do is in tests/test_ledger_contract.py, which runs on this one too.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import aiosqlite
import pytest

from core.ledger import BudgetExceeded, DuplicateRequest, LedgerError, ModelQuotaExceeded, Reservation, SQLiteLedger
from core.ledger import sqlite as ledger_module
from core.ledger.usage_table import table_of
from emulator import Emulator

from .test_ledger_contract import ANN, BOB, LLAMA, QWQ, Clock, settled_total, spend

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ledger_worker.py"


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2025, 3, 14, 20, 48, tzinfo=UTC))


@pytest.fixture
async def open_ledger(tmp_path, clock):
    """Opens ledgers in tmp_path (test clock, budget 50,000 unless told) and closes them afterwards."""
    opened: list[SQLiteLedger] = []

    async def _open(name: str = "ledger.sqlite3", **options) -> SQLiteLedger:
        options.setdefault("user_daily_tokens", 50_000)
        options.setdefault("clock", clock)
        ledger = await SQLiteLedger.open(str(tmp_path / name), **options)
        opened.append(ledger)
        return ledger

    yield _open
    for ledger in opened:
        await ledger.close()


@pytest.fixture
async def ledger(open_ledger) -> SQLiteLedger:
    return await open_ledger()


def query(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the file directly, as an operator's sqlite3 shell would."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql, params).fetchall()


# --- crash safety ---


async def test_reservations_left_open_charge_the_model_not_the_person_and_free_their_keys(open_ledger):
    ledger = await open_ledger()
    await spend(ledger, ANN, LLAMA, 300)
    await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=None, idempotency_key="Ev10")
    await ledger.reserve(user=BOB, model=QWQ, tokens=700, model_limit=None)
    await ledger.close()  # the process ends with both calls still out: their answers never reach anyone

    ledger = await open_ledger()
    assert await ledger.used_today(user=ANN) == 300 and await ledger.used_today(user=BOB) == 0
    assert await ledger.used_today(model=LLAMA) == 1_300 and await ledger.model_totals() == {LLAMA: 1_300, QWQ: 700}
    assert await ledger.used_today() == 2_000
    rows = {row.user: row for row in await ledger.usage()}
    assert (rows[ANN].total_tokens, rows[ANN].requests, rows[ANN].interrupted_tokens, rows[ANN].interrupted_requests) == (
        300,
        1,
        1_000,
        1,
    )
    assert rows[BOB].as_json() | {"day": None} == {
        "day": None,
        "user": BOB,
        "model": QWQ,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "requests": 0,
        "estimated_tokens": 0,
        "interrupted_tokens": 700,
        "interrupted_requests": 1,
    }
    with pytest.raises(ModelQuotaExceeded):  # the quota counts the interrupted call
        await ledger.reserve(user="discord:7", model=LLAMA, tokens=1, model_limit=1_300)
    # The redelivered event is answered, once.
    again = await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=None, idempotency_key="Ev10")
    await ledger.settle(again, prompt_tokens=400, completion_tokens=200, estimated=False)
    with pytest.raises(DuplicateRequest):
        await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=None, idempotency_key="Ev10")
    assert await ledger.used_today(user=ANN) == 900


async def test_killed_at_random_points_the_account_is_charged_for_every_call_and_every_event_answered_once(tmp_path):
    """The real Service on the real ledger, SIGKILLed mid-load again and again, then every event redelivered.

    "Answered" means the Service returned its reply for the event, which it does only after the call
    is settled; the worker's print stands for posting that reply. A kill between the settle's commit
    and the print is a post lost on the way: the event is answered (and charged) without a printed
    line, and its redelivery is a duplicate. Every other event is printed as answered exactly once.
    """
    rng = random.Random(20250314)
    events = range(200)
    path = tmp_path / "crash.sqlite3"
    printed: dict[int, list[tuple[str, int]]] = {n: [] for n in events}  # per event: (outcome, tokens) per line
    kills = 0

    async def run_worker(feed: list[int], kill_after: int | None) -> None:
        """Deliver `feed`; SIGKILL after `kill_after` answers (plus a random moment), else let it finish."""
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            str(path),
            emulator.base_url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert worker.stdin is not None and worker.stdout is not None  # both are pipes
        worker.stdin.write("".join(f"{n}\n" for n in feed).encode())
        await worker.stdin.drain()
        if kill_after is None:
            worker.stdin.close()
        answers = 0
        async with asyncio.timeout(30):
            while kill_after is None or answers < kill_after:
                line = await worker.stdout.readline()
                if not line:
                    break
                _, n, outcome, tokens = line.decode().split()
                printed[int(n)].append((outcome, int(tokens)))
                answers += 1
            if kill_after is not None:
                await asyncio.sleep(rng.uniform(0, 0.03))
                worker.kill()
            rest, errors = await worker.communicate()
        assert worker.returncode == (0 if kill_after is None else -signal.SIGKILL), errors.decode()[-2000:]
        for rest_line in rest.decode().split("\n")[:-1]:  # the last piece is empty or cut short by the kill
            _, n, outcome, tokens = rest_line.split()
            printed[int(n)].append((outcome, int(tokens)))

    async with Emulator(answer_delay=0.05) as emulator:
        while kills < 6:
            waiting = [n for n in events if not any(outcome == "ok" for outcome, _ in printed[n])]
            if len(waiting) < 40:
                break
            await run_worker(waiting, kill_after=rng.randint(1, len(waiting) // 3))
            kills += 1
        await run_worker(list(events), kill_after=None)  # everything redelivered, to the end
        calls = [request.body for request in emulator.requests if request.path == "/chat/completions"]
    assert kills >= 3

    rows = {row[0]: row[1:] for row in query(path, "SELECT user, total_tokens, requests, interrupted_requests FROM usage")}
    settled = {n: rows[f"console:e{n}"][0] for n in events if rows.get(f"console:e{n}", (0, 0))[1]}
    lost_posts = 0
    for n in events:
        answers = [tokens for outcome, tokens in printed[n] if outcome == "ok"]
        assert len(answers) <= 1, (n, printed[n])  # never answered twice
        assert rows[f"console:e{n}"][1] == 1, (n, rows[f"console:e{n}"])  # charged once, and only for its answer
        if answers:
            assert settled[n] == answers[0]
        else:
            lost_posts += 1  # settled, then killed before the post
        assert printed[n][-1][0] == ("duplicate" if len(printed[n]) > 1 or not answers else "ok")
    assert lost_posts <= 64 * kills
    assert sum(row[2] for row in rows.values()) > 0  # kills did cut calls off

    # The account is charged at least what the API was asked to spend: the emulator answers a question
    # the same way each time, so each call cost what the settled answer to its event cost.
    asked = collections.Counter(int(body["messages"][-1]["content"].rsplit(" ", 1)[1]) for body in calls)
    api_tokens = sum(settled[n] * count for n, count in asked.items())
    [(account,)] = query(path, "SELECT SUM(total_tokens + interrupted_tokens) FROM usage")
    assert account >= api_tokens and len(calls) >= len(events)
    ledger = await SQLiteLedger.open(str(path), user_daily_tokens=10**9, owner=False)
    try:
        for n in (0, 99, 199):  # a person is charged what their answer cost, never an interrupted call
            assert await ledger.used_today(user=f"console:e{n}") == settled[n]
    finally:
        await ledger.close()


async def test_a_failed_write_refuses_the_call_and_leaves_the_totals_as_they_were(open_ledger, monkeypatch):
    ledger = await open_ledger(user_daily_tokens=1_000)

    def disk_full(*args):
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(ledger, "_commit", disk_full)
        with pytest.raises(LedgerError, match="disk is full"):
            await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=None, idempotency_key="Ev05")
    reservation = await ledger.reserve(user=ANN, model=LLAMA, tokens=1_000, model_limit=None, idempotency_key="Ev05")
    with monkeypatch.context() as patch:
        patch.setattr(ledger, "_commit", disk_full)
        with pytest.raises(LedgerError):
            await ledger.settle(reservation, prompt_tokens=10, completion_tokens=10, estimated=False)
    assert await ledger.used_today(user=ANN) == 1_000  # still reserved, in the file as in memory
    await ledger.settle(reservation, prompt_tokens=10, completion_tokens=10, estimated=False)
    assert await ledger.used_today(user=ANN) == 20


async def test_while_another_process_holds_the_write_lock_the_loop_runs_on_and_the_write_lands_after(open_ledger, tmp_path):
    """A commit on the event loop never waits on another process's lock: that write goes to the writer thread."""
    ledger = await open_ledger()
    await spend(ledger, ANN, LLAMA, 100)  # and the deletion of expired keys that opening starts is over
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # as `iobot limits` setting a budget would, held for a while
        spending = asyncio.create_task(spend(ledger, ANN, LLAMA, 100))
        gaps = []
        for _ in range(20):
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            gaps.append(time.perf_counter() - started)
        assert not spending.done()
        assert max(gaps) < 1.0  # a commit waiting on the lock on the loop would stop it for the 5 s busy timeout
        other.execute("COMMIT")
        await asyncio.wait_for(spending, timeout=5)
    assert await ledger.used_today(user=ANN) == 200


async def test_the_write_ahead_log_is_checkpointed_on_a_thread_and_stays_small(open_ledger, tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "CHECKPOINT_COMMITS", 20)
    ledger = await open_ledger()
    for _ in range(1_000):
        await spend(ledger, ANN, LLAMA, 10)
    log_size = (tmp_path / "ledger.sqlite3-wal").stat().st_size
    assert log_size < 512 * 1024  # 2,000 transactions of a few pages each would fill several MB unchecked
    assert await ledger.used_today(user=ANN) == 10_000


# --- idempotency keys in the file ---


async def test_a_cancelled_caller_leaves_the_others_in_its_batch_and_its_own_write_goes_on(open_ledger, tmp_path):
    ledger = await open_ledger()
    calls = [asyncio.create_task(spend(ledger, user, LLAMA, 100)) for user in (ANN, BOB, ANN)]
    await asyncio.sleep(0)  # all three reserved and wait on one batch
    calls[1].cancel()
    await asyncio.gather(calls[0], calls[2])
    assert calls[1].cancelled() and await ledger.used_today(user=ANN) == 200
    assert query(tmp_path / "ledger.sqlite3", "SELECT COUNT(*) FROM reservations") == [(1,)]  # BOB's, until it expires


async def test_the_usage_views_for_the_cli_agree_with_usage_and_user_limit(open_ledger, clock):
    owner = await open_ledger(user_daily_tokens=50_000)
    ada = 'slack:T1:UÅda "quoted"'
    await owner.set_user_limit(BOB, 900)
    for user, model, tokens in ((ANN, LLAMA, 10), (BOB, LLAMA, 20), (BOB, QWQ, 30), (ada, QWQ, 40)):
        await spend(owner, user, model, tokens)
    clock.advance(days=1)
    await spend(owner, ANN, QWQ, 50)
    cli = await open_ledger(owner=False, user_daily_tokens=70_000)  # the CLI's default budget is its own
    for day in (clock.now.date() - timedelta(days=1), None, date(2000, 1, 1)):
        for person in (None, BOB, ada, "console:nobody"):
            rows = await cli.usage(day=day, user=person)
            expected = [{**row.as_json(), "user_limit": await cli.user_limit(row.user)} for row in rows]
            assert [json.loads(row) for row in await cli.usage_json(day=day, user=person)] == expected
            tuples = await cli.usage_with_budgets(day=day, user=person)
            assert [tuple(row.values()) for row in expected] == [tuple(row) for row in tuples]
    bob = await cli.usage_with_budgets(day=clock.now.date() - timedelta(days=1), user=BOB)
    ann = await cli.usage_with_budgets(user=ANN)
    assert [(row[2], row[-1]) for row in bob + ann] == [(QWQ, 900), (LLAMA, 900), (QWQ, 70_000)]


async def test_sqlite_writes_the_usage_table_as_python_lays_it_out(open_ledger, clock):
    owner = await open_ledger(user_daily_tokens=50_000)
    odd = 'console:Åsa"\\%s%d'  # padded by characters, not bytes; quotes and printf's own signs kept as text
    long = "console:a-login-longer-than-the-others"
    for user, model, tokens in ((ANN, LLAMA, 10), (BOB, "acme/100%-model", 3), (BOB, LLAMA, 1_234_567), (odd, QWQ, 40)):
        await spend(owner, user, model, tokens)
    await spend(owner, long, QWQ, 1)
    await owner.set_user_limit(BOB, 9)
    await owner.set_user_limit("console:absent", 10**15)  # no use today: its budget widens nothing
    cli = await open_ledger(owner=False, user_daily_tokens=10**12)  # 1,000,000,000,000: wider than its header
    for person in (None, ANN, BOB, odd, "console:nobody"):
        table = await cli.usage_table(user=person)
        assert table == table_of(await cli.usage_with_budgets(user=person))
        assert len(table.lines) == len(await cli.usage(user=person))
    table = await cli.usage_table()
    assert table.header.split() == "day (UTC) user model requests tokens estimated interrupted user limit/day".split()
    assert [line.split()[1:] for line in table.lines] == [
        [long, QWQ, "1", "1", "0", "0", "1,000,000,000,000"],
        [odd, QWQ, "1", "40", "0", "0", "1,000,000,000,000"],
        [BOB, "acme/100%-model", "1", "3", "0", "0", "9"],
        [BOB, LLAMA, "1", "1,234,567", "0", "0", "9"],
        [ANN, LLAMA, "1", "10", "0", "0", "1,000,000,000,000"],
    ]
    assert {len(line) for line in table.lines} == {len(table.header) + len("1,000,000,000,000") - len("user limit/day")}
    for person in (ANN, odd, long):  # now everyone shown has an override: the default budget no longer sets the width
        await owner.set_user_limit(person, 5)
    table = await cli.usage_table()
    assert table == table_of(await cli.usage_with_budgets())
    assert {len(line) for line in table.lines} == {len(table.header)}


async def test_keys_survive_a_restart_and_are_forgotten_after_two_days(open_ledger, clock):
    ledger = await open_ledger()
    answered = await ledger.reserve(user=ANN, model=LLAMA, tokens=10, model_limit=None, idempotency_key="Ev04")
    await ledger.settle(answered, prompt_tokens=5, completion_tokens=5, estimated=False)
    failed = await ledger.reserve(user=ANN, model=LLAMA, tokens=10, model_limit=None, idempotency_key="Ev06")
    await ledger.release(failed)
    await ledger.close()
    ledger = await open_ledger()
    clock.advance(days=1)
    for key in ("Ev04", "Ev06", "Ev04"):  # looked up in the file, then remembered
        with pytest.raises(DuplicateRequest):
            await ledger.reserve(user=ANN, model=LLAMA, tokens=10, model_limit=None, idempotency_key=key)
    assert await ledger.used_today(user=ANN) == 0  # the refused duplicates hold nothing
    clock.advance(days=1, minutes=1)
    await ledger.reserve(user=ANN, model=LLAMA, tokens=10, model_limit=None, idempotency_key="Ev06")


def add_keys(path: Path, count: int, created_at: float, prefix: str) -> None:
    """Idempotency keys written straight into the file, as a long-running service leaves them."""
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO idempotency (key, created_at) VALUES (?, ?)", ((f"{prefix}{n}", created_at) for n in range(count))
        )


@pytest.fixture
def statements(monkeypatch) -> list[str]:
    """Every SQL statement the ledgers opened from now on run, in order."""
    seen: list[str] = []
    connect = ledger_module._connect

    async def traced(path: str) -> tuple[aiosqlite.Connection, sqlite3.Connection]:
        db, connection = await connect(path)
        connection.set_trace_callback(seen.append)
        return db, connection

    monkeypatch.setattr(ledger_module, "_connect", traced)
    return seen


async def test_open_reads_no_keys_and_expired_ones_are_deleted_in_small_chunks_while_calls_go_on(
    open_ledger, tmp_path, clock, statements, monkeypatch
):
    monkeypatch.setattr(ledger_module, "PRUNE_CHUNK", 100)
    monkeypatch.setattr(ledger_module, "PRUNE_PAUSE", 0.001)
    await (await open_ledger()).close()
    old = (clock.now - timedelta(days=3)).timestamp()
    add_keys(tmp_path / "ledger.sqlite3", 5_000, old, "old-")
    add_keys(tmp_path / "ledger.sqlite3", 50, clock.now.timestamp(), "new-")
    statements.clear()

    ledger = await open_ledger()
    at_open = list(statements)
    assert any(sql.startswith("SELECT") and "FROM usage" in sql for sql in at_open)  # the totals were read
    assert not [sql for sql in at_open if "FROM idempotency" in sql and "LIMIT 100" not in sql], at_open

    gaps: list[float] = []

    async def heartbeat() -> None:
        while ledger._pruner is not None and not ledger._pruner.done():
            tick = time.perf_counter()
            await asyncio.sleep(0.001)
            gaps.append(time.perf_counter() - tick)

    async def calls() -> None:
        for n in range(1_000):
            reservation = await ledger.reserve(user=ANN, model=LLAMA, tokens=1, model_limit=None, idempotency_key=f"c{n}")
            await ledger.settle(reservation, prompt_tokens=1, completion_tokens=0, estimated=False)
            if ledger._pruner.done():
                return

    await asyncio.gather(heartbeat(), calls())
    assert query(tmp_path / "ledger.sqlite3", "SELECT COUNT(*) FROM idempotency WHERE key LIKE 'old-%'") == [(0,)]
    with pytest.raises(DuplicateRequest):  # the fresh keys stay
        await ledger.reserve(user=ANN, model=LLAMA, tokens=1, model_limit=None, idempotency_key="new-7")
    prunes = [n for n, sql in enumerate(statements) if sql.startswith("DELETE FROM idempotency")]
    commits = [n for n, sql in enumerate(statements) if "INSERT INTO usage" in sql]
    assert len(prunes) == 51  # 5,000 keys, 100 at a time, and the look that finds none left
    assert any(prunes[0] < n < prunes[-1] for n in commits)  # calls were settled between the chunks
    assert max(gaps) < 0.5  # the loop never waits on the deletes (benchmarks/ledger.py times 1M keys)


# --- limits set by another process ---


async def test_another_process_reads_and_sets_limits_but_only_the_owner_charges(open_ledger):
    owner = await open_ledger()
    await spend(owner, BOB, LLAMA, 700)
    with pytest.raises(LedgerError, match=f"in use by iobot process {os.getpid()} on "):
        await open_ledger()  # a second owner of the same file
    cli = await open_ledger(owner=False)
    assert await cli.used_today(user=BOB) == 700
    await cli.set_user_limit(ANN, 100)
    with pytest.raises(BudgetExceeded):  # at once: the very next reservation
        await owner.reserve(user=ANN, model=LLAMA, tokens=101, model_limit=None)
    with pytest.raises(LedgerError, match="only the process serving requests charges it") as refused:
        await cli.reserve(user=ANN, model=LLAMA, tokens=1, model_limit=None)
    assert "owner=" not in str(refused.value)


async def test_a_budget_changed_elsewhere_applies_to_reservations_already_waiting(open_ledger):
    owner = await open_ledger()
    cli = await open_ledger(owner=False)
    await owner.reserve(user=ANN, model=LLAMA, tokens=10, model_limit=None)  # the budgets have been read once
    # A burst keeps a look at the budgets in flight; the change lands while later callers wait on it.
    first = [asyncio.create_task(owner.reserve(user=BOB, model=LLAMA, tokens=1, model_limit=None)) for _ in range(20)]
    await asyncio.sleep(0)
    await cli.set_user_limit(ANN, 500)
    late = [asyncio.create_task(owner.reserve(user=ANN, model=LLAMA, tokens=600, model_limit=None)) for _ in range(5)]
    outcomes = await asyncio.gather(*first, *late, return_exceptions=True)
    assert all(isinstance(outcome, Reservation) for outcome in outcomes[:20])
    assert all(isinstance(outcome, BudgetExceeded) and outcome.limit == 500 for outcome in outcomes[20:])
    await cli.set_user_limit(ANN, None)
    await owner.reserve(user=ANN, model=LLAMA, tokens=600, model_limit=None)


HOLDER = """
import asyncio, sys
from core.ledger import SQLiteLedger

async def main():
    ledger = await SQLiteLedger.open(sys.argv[1], user_daily_tokens=1000)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await ledger.close()

asyncio.run(main())
"""


def hold(path: Path) -> subprocess.Popen:
    """Another process owning the ledger at `path` until its stdin is closed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
    return holder


async def test_a_second_owner_is_refused_by_any_name_and_told_which_process_holds_the_ledger(tmp_path):
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "iobot.sqlite3"
    holder = hold(real)
    try:
        (tmp_path / "link.sqlite3").symlink_to(real)
        (tmp_path / "data-link").symlink_to(tmp_path / "data")
        for name in (real, tmp_path / "link.sqlite3", tmp_path / "data-link" / "iobot.sqlite3"):
            with pytest.raises(LedgerError) as refused:
                await SQLiteLedger.open(str(name), user_daily_tokens=1_000)
            message = str(refused.value)
            assert f"{real} is in use by iobot process {holder.pid} on " in message, message
            assert "Stop that process" in message and "owner=" not in message
        real.rename(tmp_path / "data" / "moved.sqlite3")  # the lock goes with the file, not its name
        with pytest.raises(LedgerError, match="is in use by"):
            await SQLiteLedger.open(str(tmp_path / "data" / "moved.sqlite3"), user_daily_tokens=1_000)
    finally:
        holder.communicate("", timeout=10)
    ledger = await SQLiteLedger.open(str(tmp_path / "data-link" / "moved.sqlite3"), user_daily_tokens=1_000)
    await ledger.close()


async def test_a_ledger_with_hard_links_is_refused_with_what_to_do(tmp_path):
    real = tmp_path / "iobot.sqlite3"
    holder = hold(real)
    try:
        os.link(real, tmp_path / "copy.sqlite3")  # made while the owner runs
        for name, owner in ((real, True), (tmp_path / "copy.sqlite3", True), (tmp_path / "copy.sqlite3", False)):
            with pytest.raises(LedgerError) as refused:
                await SQLiteLedger.open(str(name), user_daily_tokens=1_000, owner=owner)
            assert "has 2 names (hard links" in str(refused.value) and "-samefile" in str(refused.value)
    finally:
        holder.communicate("", timeout=10)
    os.unlink(tmp_path / "copy.sqlite3")
    ledger = await SQLiteLedger.open(str(real), user_daily_tokens=1_000)
    await ledger.close()


# --- schema ---


async def test_a_new_file_gets_the_latest_schema_in_wal_mode_and_reopens_intact(open_ledger, tmp_path):
    ledger = await open_ledger()
    await spend(ledger, ANN, LLAMA, 1_234)
    await ledger.set_user_limit(BOB, 9)
    await ledger.close()
    path = tmp_path / "ledger.sqlite3"
    assert query(path, "PRAGMA user_version") == [(len(ledger_module.MIGRATIONS),)]
    assert query(path, "PRAGMA journal_mode") == [("wal",)]

    ledger = await open_ledger()
    assert settled_total(await ledger.usage()) == 1_234
    assert await ledger.user_limits() == {BOB: 9}
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(user=ANN, model=LLAMA, tokens=48_767, model_limit=None)  # totals reloaded


async def test_migrations_run_forward_from_the_stored_version(open_ledger, tmp_path, monkeypatch):
    await (await open_ledger()).close()
    added = "ALTER TABLE usage ADD COLUMN cost_cents INTEGER NOT NULL DEFAULT 0"
    monkeypatch.setattr(ledger_module, "MIGRATIONS", (*ledger_module.MIGRATIONS, added))
    ledger = await open_ledger()
    await spend(ledger, ANN, LLAMA, 10)
    await ledger.close()
    path = tmp_path / "ledger.sqlite3"
    assert query(path, "PRAGMA user_version") == [(len(ledger_module.MIGRATIONS),)]
    assert query(path, "SELECT total_tokens, cost_cents FROM usage") == [(10, 0)]


SPEND_FROM_USAGE = "SELECT day, model, SUM(total_tokens + interrupted_tokens) FROM usage GROUP BY day, model ORDER BY day, model"
MODEL_SPEND = "SELECT day, model, tokens FROM model_spend ORDER BY day, model"


async def test_each_models_daily_spend_is_kept_equal_to_its_usage_rows_through_settles_and_crashes(open_ledger, tmp_path, clock):
    ledger = await open_ledger()
    await spend(ledger, ANN, LLAMA, 300)
    await spend(ledger, BOB, LLAMA, 200)
    await spend(ledger, BOB, QWQ, 50)
    clock.advance(days=1)
    await spend(ledger, ANN, LLAMA, 5)
    await ledger.reserve(user=ANN, model=QWQ, tokens=700, model_limit=None)  # cut off by the "crash" below
    await ledger.close()
    ledger = await open_ledger()  # charges the call left open to its model, as interrupted
    path = tmp_path / "ledger.sqlite3"
    assert query(path, MODEL_SPEND) == query(path, SPEND_FROM_USAGE)
    assert await ledger.model_totals(clock.now.date() - timedelta(days=1)) == {LLAMA: 500, QWQ: 50}
    assert await ledger.model_totals() == {LLAMA: 5, QWQ: 700}
    assert await ledger.used_today() == 705 and await ledger.used_today(model=QWQ) == 700


async def test_a_ledger_from_before_the_dashboard_gets_its_models_spend_from_its_usage(open_ledger, tmp_path, clock):
    path = tmp_path / "ledger.sqlite3"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:  # schema version 3, as iobot wrote it then
        for number, script in enumerate(ledger_module.MIGRATIONS[:3], start=1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        columns = (
            "day, user, model, prompt_tokens, completion_tokens, total_tokens, requests, estimated_tokens, interrupted_tokens"
        )
        today = clock.now.date().isoformat()
        db.execute(
            f"INSERT INTO usage ({columns}) VALUES (?, ?, ?, 200, 100, 300, 1, 0, 0), (?, ?, ?, 0, 0, 0, 0, 0, 40)",
            (today, ANN, LLAMA, today, BOB, QWQ),
        )
    ledger = await open_ledger()
    assert query(path, "PRAGMA user_version") == [(len(ledger_module.MIGRATIONS),)]
    assert query(path, MODEL_SPEND) == query(path, SPEND_FROM_USAGE) and await ledger.model_totals() == {LLAMA: 300, QWQ: 40}


async def test_a_file_from_a_newer_iobot_is_refused(tmp_path, open_ledger):
    query(tmp_path / "new.sqlite3", "PRAGMA user_version = 99")
    with pytest.raises(LedgerError, match="schema version 99"):
        await open_ledger("new.sqlite3")


async def test_the_queries_use_indexes(ledger, tmp_path):
    queries = [
        ledger_module.USAGE_ROWS,
        ledger_module.USAGE_ROWS_OF_USER,
        ledger_module.USAGE_WITH_BUDGETS + ledger_module.OF_DAY,
        ledger_module.USAGE_WITH_BUDGETS + ledger_module.OF_DAY_AND_USER,
        ledger_module.USAGE_JSON + ledger_module.OF_DAY,
        ledger_module.USAGE_JSON + ledger_module.OF_DAY_AND_USER,
        ledger_module.TABLE_SIZES + ledger_module.OF_DAY,
        ledger_module.TABLE_SIZES + ledger_module.OF_DAY_AND_USER,
        ledger_module.TABLE_LINES + ledger_module.OF_DAY,
        ledger_module.TABLE_LINES + ledger_module.OF_DAY_AND_USER,
        ledger_module.SPENT_BY_MODEL,
        ledger_module.SPENT_BY_MODEL_SINCE,
        ledger_module.SETTLED_BY_USER_SINCE,
        ledger_module.FORGET_KEYS,
        ledger_module.SPENT_SUM + " AND model = ?",
        ledger_module.SETTLED_SUM + " AND user = ?",
        ledger_module.DELETE_RESERVATION,
        ledger_module.FREE_KEY,
        ledger_module.ANSWER_LATENCIES,
    ]
    for sql in queries:
        steps = query(tmp_path / "ledger.sqlite3", "EXPLAIN QUERY PLAN " + sql, ("x",) * sql.count("?"))
        plan = " ".join(step[3] for step in steps)
        assert plan.startswith("SEARCH") and "USING" in plan and "TEMP B-TREE" not in plan, (sql, plan)


async def test_the_usage_tables_budgets_are_looked_up_per_override_not_per_row(ledger, tmp_path):
    steps = query(
        tmp_path / "ledger.sqlite3", "EXPLAIN QUERY PLAN " + ledger_module.OVERRIDES_SHOWN + ledger_module.OF_DAY, ("x",)
    )
    plan = " ".join(step[3] for step in steps)
    assert plan == "SCAN user_limits SEARCH usage USING PRIMARY KEY (day=? AND user=?)", plan


async def test_the_days_top_users_are_read_through_the_primary_key_without_a_scan(ledger, tmp_path):
    steps = query(tmp_path / "ledger.sqlite3", "EXPLAIN QUERY PLAN " + ledger_module.TOP_USERS, (1, "2025-03-14", 10))
    plan = " ".join(step[3] for step in steps)
    assert "SEARCH usage USING PRIMARY KEY (day=?)" in plan and "SCAN usage" not in plan, plan
