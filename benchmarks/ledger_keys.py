"""Idempotency keys at scale: opening a ledger that holds 1M of them, and a new UTC day expiring them all.

Run from the project root: `python benchmarks/ledger_keys.py`. Prints one JSON line:
- open_s: opening (as the owner) a ledger file holding KEYS idempotency keys of the last day;
- expire_s: from the first reservation of the next UTC day, when all those keys are out of date, until
  none is left in the file;
- max_loop_gap_ms: the longest the event loop went without running a 1 ms heartbeat, open included;
- max_pair_ms, pairs_per_s: the slowest reserve-and-settle pair, and the rate, of TASKS concurrent tasks
  reserving and settling while the keys are expired; pairs_per_s_before: their rate for BEFORE_SECONDS
  before, with nothing to expire;
- keys_left_fresh: whether the keys written on the new day are all still there.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.ledger import SQLiteLedger

KEYS = 1_000_000
TASKS = 16
BEFORE_SECONDS = 3.0
MAX_SECONDS = 120.0  # a bound on the expiry phase, far beyond what it should take
POLL_SECONDS = 0.05
MODEL = "meta-llama/Llama-3.3-70B-Instruct"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def fill(path: str, created_at: float) -> None:
    """An owner's file holding KEYS keys, all written at `created_at`."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO idempotency (key, created_at) SELECT 'slack:E' || printf('%09d', i), ? FROM n",
            (KEYS - 1, created_at),
        )


def old_keys_left(path: str, cutoff: float) -> bool:
    with closing(sqlite3.connect(path)) as db:
        return bool(db.execute("SELECT EXISTS (SELECT 1 FROM idempotency WHERE created_at < ?)", (cutoff,)).fetchone()[0])


async def measure(path: str) -> dict[str, object]:
    clock = Clock(datetime(2025, 3, 14, 12, 0, tzinfo=UTC))
    await (await SQLiteLedger.open(path, user_daily_tokens=10**12, clock=clock)).close()
    fill(path, clock.now.timestamp())

    gaps = [0.0]
    beating = True

    async def heartbeat() -> None:
        while beating:
            tick = time.perf_counter()
            await asyncio.sleep(0.001)
            gaps.append(time.perf_counter() - tick)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    ledger = await SQLiteLedger.open(path, user_daily_tokens=10**12, clock=clock)
    open_s = time.perf_counter() - started

    pair_times: list[float] = []
    working, expiring = True, False
    reserved_after = 0  # reservations whose key was written on the new day

    async def work(task: int) -> None:
        for n in range(10**7):
            if not working:
                return
            nonlocal reserved_after
            began, phase = time.perf_counter(), "after" if expiring else "before"
            reservation = await ledger.reserve(
                user=f"console:user{task}", model=MODEL, tokens=1_000, model_limit=None, idempotency_key=f"{phase}-{task}-{n}"
            )
            reserved_after += phase == "after"
            await ledger.settle(reservation, prompt_tokens=300, completion_tokens=200, estimated=False)
            pair_times.append(time.perf_counter() - began)

    workers = [asyncio.create_task(work(task)) for task in range(TASKS)]
    await asyncio.sleep(BEFORE_SECONDS)
    pairs_before = len(pair_times)
    pair_times.clear()

    clock.now += timedelta(days=2, hours=1)  # every key written so far is now older than the two days kept
    expiring = True
    cutoff = (clock.now - timedelta(days=2)).timestamp()
    started = time.perf_counter()
    for _ in range(int(MAX_SECONDS / POLL_SECONDS)):  # until the file holds no expired key, or the bound
        if not await asyncio.to_thread(old_keys_left, path, cutoff):
            break
        await asyncio.sleep(POLL_SECONDS)
    expire_s = time.perf_counter() - started
    working = False
    await asyncio.gather(*workers)
    beating = False
    await beat
    await ledger.close()
    with closing(sqlite3.connect(path)) as db:
        [(fresh,)] = db.execute("SELECT COUNT(*) FROM idempotency WHERE key LIKE 'after-%'").fetchall()
    return {
        "keys": KEYS,
        "open_s": round(open_s, 3),
        "expire_s": round(expire_s, 2),
        "max_loop_gap_ms": round(max(gaps) * 1000, 1),
        "max_pair_ms": round(max(pair_times) * 1000, 1),
        "pairs_per_s": round(len(pair_times) / expire_s),
        "pairs_per_s_before": round(pairs_before / BEFORE_SECONDS),
        "keys_left_fresh": fresh == reserved_after,
        "concurrent_tasks": TASKS,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        print(json.dumps(asyncio.run(measure(str(Path(directory) / "ledger.sqlite3")))))


if __name__ == "__main__":
    main()
