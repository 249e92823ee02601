"""Claims per second: the idempotency check every incoming message makes, on SQLiteStore and in memory.

Run from the project root: `python benchmarks/store.py`. Prints one JSON line:
- claims_per_s_memory: MemoryStore, the baseline (a dict);
- claims_per_s_sqlite: SQLiteStore on a fresh ledger file, TASKS tasks claiming distinct keys at once;
- claims_per_s_sqlite_pruning: the same while EXPIRED expired claims wait in the file, so that every
  claim also deletes a few of them;
- expired_left: expired claims still in the file after that run (each claim deletes PRUNE_PER_WRITE);
- ok: both SQLite rates reach TARGET_PER_S, far above the messages a workspace sends.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.ledger import MemoryStore, SQLiteLedger, Store

CLAIMS = 20_000
TASKS = 16
EXPIRED = 100_000
TARGET_PER_S = 1_000


async def claims_per_s(store: Store, prefix: str) -> float:
    """Claim CLAIMS distinct keys from TASKS tasks at once; every claim must win."""

    async def worker(task: int) -> None:
        for n in range(task, CLAIMS, TASKS):
            if not await store.claim(f"{prefix}{n}"):
                raise AssertionError(f"a fresh key {prefix}{n} was refused")

    started = time.perf_counter()
    await asyncio.gather(*(worker(task) for task in range(TASKS)))
    return CLAIMS / (time.perf_counter() - started)


def add_expired(path: str) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO claims (key, expires_at) SELECT 'old:' || i, 0 FROM n",
            (EXPIRED - 1,),
        )


def expired_left(path: str) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM claims WHERE key LIKE 'old:%'").fetchone()[0])


async def measure(directory: str) -> dict[str, float | int | bool]:
    path = str(Path(directory) / "ledger.sqlite3")
    figures: dict[str, float | int | bool] = {"claims_per_s_memory": round(await claims_per_s(MemoryStore(), "m:"))}
    ledger = await SQLiteLedger.open(path, user_daily_tokens=50_000)
    try:
        figures["claims_per_s_sqlite"] = round(await claims_per_s(ledger.store, "fresh:"))
    finally:
        await ledger.close()
    add_expired(path)
    ledger = await SQLiteLedger.open(path, user_daily_tokens=50_000)
    try:
        figures["claims_per_s_sqlite_pruning"] = round(await claims_per_s(ledger.store, "busy:"))
    finally:
        await ledger.close()
    figures["expired_left"] = expired_left(path)
    figures["target_per_s"] = TARGET_PER_S
    figures["ok"] = min(figures["claims_per_s_sqlite"], figures["claims_per_s_sqlite_pruning"]) >= TARGET_PER_S
    return figures


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        print(json.dumps(asyncio.run(measure(directory))))


if __name__ == "__main__":
    main()
