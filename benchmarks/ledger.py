"""Ledger throughput: reserve-and-settle pairs per second against plain sqlite3 upsert transactions.

Run from the project root: `python benchmarks/ledger.py`. Prints one JSON line:
- pairs_per_s: reserve + settle pairs per second, 64 concurrent tasks, a file database;
- sqlite3_upsert_tx_per_s: stdlib sqlite3, one single-row upsert per transaction, the same PRAGMAs,
  the same directory, the same run: what this machine's SQLite does with no Python layer around it;
- ratio: pairs_per_s / (sqlite3_upsert_tx_per_s / 2), since a pair is two transactions' worth of work;
- totals_exact: whether the ledger's totals equal, to the token, what the tasks settled.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.ledger import SQLiteLedger
from core.ledger.sqlite import PRAGMAS

TASKS = 64
SECONDS = 3.0
MAX_PAIRS_PER_TASK = 100_000  # a bound, far beyond what SECONDS allows
USERS = 500
MODELS = ("meta-llama/Llama-3.3-70B-Instruct", "Qwen/QwQ-32B", "deepseek-ai/DeepSeek-R1", "mistralai/Ministral-8B")
TARGET_PAIRS_PER_S = 5_000
TARGET_RATIO = 0.2


async def ledger_pairs_per_s(path: str) -> tuple[float, bool]:
    """Pairs per second, and whether the totals came out exact."""
    ledger = await SQLiteLedger.open(path, user_daily_tokens=10**12)
    settled = [0] * TASKS
    pairs = [0] * TASKS
    deadline = time.perf_counter() + SECONDS

    async def work(task: int) -> None:
        rng = random.Random(task)
        for n in range(MAX_PAIRS_PER_TASK):
            if time.perf_counter() >= deadline:
                return
            reservation = await ledger.reserve(
                user=f"console:user{rng.randrange(USERS)}",
                model=rng.choice(MODELS),
                tokens=1_500,
                model_limit=10**12,
                idempotency_key=f"event-{task}-{n}",
            )
            prompt, completion = rng.randint(20, 800), rng.randint(1, 700)
            await ledger.settle(reservation, prompt_tokens=prompt, completion_tokens=completion, estimated=n % 10 == 0)
            settled[task] += prompt + completion
            pairs[task] += 1

    started = time.perf_counter()
    await asyncio.gather(*(work(task) for task in range(TASKS)))
    elapsed = time.perf_counter() - started

    rows = await ledger.usage()
    exact = (
        sum(row.total_tokens for row in rows) == sum(settled)
        and sum(row.requests for row in rows) == sum(pairs)
        and await ledger.used_today() == sum(settled)
        and sum((await ledger.model_totals()).values()) == sum(settled)
    )
    await ledger.close()
    return sum(pairs) / elapsed, exact


def sqlite3_upsert_tx_per_s(path: str) -> float:
    """Single-row upserts, each its own transaction, as fast as stdlib sqlite3 goes."""
    conn = sqlite3.connect(path)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    conn.execute("CREATE TABLE counters (key TEXT PRIMARY KEY, tokens INTEGER NOT NULL) WITHOUT ROWID")
    upsert = "INSERT INTO counters VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET tokens = tokens + excluded.tokens"
    keys = [f"console:user{n}" for n in range(USERS)]
    count = 0
    started = time.perf_counter()
    deadline = started + SECONDS
    for count in range(1, 10_000_000):
        conn.execute(upsert, (keys[count % USERS], count))
        conn.commit()
        if count % 256 == 0 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        pairs_per_s, exact = asyncio.run(ledger_pairs_per_s(str(Path(directory) / "ledger.sqlite3")))
        tx_per_s = sqlite3_upsert_tx_per_s(str(Path(directory) / "plain.sqlite3"))
    ratio = pairs_per_s / (tx_per_s / 2)
    print(
        json.dumps(
            {
                "pairs_per_s": round(pairs_per_s),
                "sqlite3_upsert_tx_per_s": round(tx_per_s),
                "ratio": round(ratio, 3),
                "totals_exact": exact,
                "concurrent_tasks": TASKS,
                "target_pairs_per_s": TARGET_PAIRS_PER_S,
                "target_ratio": TARGET_RATIO,
                "targets_met": pairs_per_s >= TARGET_PAIRS_PER_S and ratio >= TARGET_RATIO and exact,
            }
        )
    )


if __name__ == "__main__":
    main()
