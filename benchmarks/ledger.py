"""Ledger speed: reserve-and-settle pairs against plain sqlite3 running the ledger's own statements.

Run from the project root: `python benchmarks/ledger.py`. Prints one JSON line:
- pairs_per_s: reserve + settle pairs per second, TASKS concurrent tasks, a file database;
- raw_pairs_per_s: stdlib sqlite3 in the same run, the same schema, PRAGMAs and statements
  (core/ledger/sqlite.py's SPENT_KEYS, INSERT_RESERVATION, REMEMBER_KEY, ADD_USAGE, ADD_MODEL_SPEND, DELETE_RESERVATION),
  batched as the ledger's group commit batches them under that load: one transaction holding TASKS
  reservations, then one holding their TASKS settlements; what SQLite does with no asyncio around it;
- ratio: pairs_per_s / raw_pairs_per_s;
- latency_ms / raw_latency_ms: one task alone, milliseconds per pair (each pair then is two
  transactions of one reservation and one settlement, for the ledger as for the baseline);
  latency_ratio is latency_ms / raw_latency_ms;
- totals_exact: whether the ledger's totals equal, to the token, what the tasks settled.
The two alternate in ROUNDS rounds (raw, ledger, then ledger, raw, ...), each on a fresh file, so that
drift on a shared machine hits both; the figures are the medians of the rounds. Each phase runs at
most SECONDS and at most MAX_PAIRS pairs.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.ledger import Ledger, SQLiteLedger
from core.ledger.sqlite import (
    ADD_MODEL_SPEND,
    ADD_USAGE,
    DELETE_RESERVATION,
    INSERT_RESERVATION,
    KEY_RETENTION,
    MIGRATIONS,
    PRAGMAS,
    REMEMBER_KEY,
    SPENT_KEYS,
)

TASKS = 64
SECONDS = 1.5
ROUNDS = 3
MAX_PAIRS = 200_000  # a bound, far beyond what SECONDS allows
USERS = 500
MODELS = ("meta-llama/Llama-3.3-70B-Instruct", "Qwen/QwQ-32B", "deepseek-ai/DeepSeek-R1", "mistralai/Ministral-8B")
TARGET_RATIO = 0.5
TARGET_LATENCY_RATIO = 2.0


async def ledger_pairs(ledger: Ledger, tasks: int) -> tuple[int, float, bool]:
    """Pairs settled by `tasks` concurrent tasks on an empty ledger, the seconds they took, and whether the
    totals came out exact."""
    settled = [0] * tasks
    pairs = [0] * tasks
    deadline = time.perf_counter() + SECONDS

    async def work(task: int) -> None:
        rng = random.Random(task)
        for n in range(MAX_PAIRS // tasks):
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
    await asyncio.gather(*(work(task) for task in range(tasks)))
    elapsed = time.perf_counter() - started

    rows = await ledger.usage()
    exact = (
        sum(row.total_tokens for row in rows) == sum(settled)
        and sum(row.requests for row in rows) == sum(pairs)
        and await ledger.used_today() == sum(settled)
        and sum((await ledger.model_totals()).values()) == sum(settled)
    )
    return sum(pairs), elapsed, exact


async def sqlite_pairs(path: str, tasks: int) -> tuple[int, float, bool]:
    ledger = await SQLiteLedger.open(path, user_daily_tokens=10**12)
    try:
        return await ledger_pairs(ledger, tasks)
    finally:
        await ledger.close()


def raw_pairs(path: str, batch: int) -> tuple[int, float]:
    """The ledger's writes through plain sqlite3: `batch` reservations per transaction, then their settlements."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    for script in MIGRATIONS:
        conn.executescript(script)
    rng = random.Random(0)
    pairs = 0
    started = time.perf_counter()
    deadline = started + SECONDS
    while pairs < MAX_PAIRS and time.perf_counter() < deadline:
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        ids = range(pairs + 1, pairs + batch + 1)
        users = [(f"console:user{rng.randrange(USERS)}", rng.choice(MODELS)) for _ in ids]
        keys = [f"event-{n}" for n in ids]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(SPENT_KEYS, (json.dumps(keys), now - KEY_RETENTION.total_seconds())).fetchall()
        conn.executemany(
            INSERT_RESERVATION, [(n, user, model, day, 1_500, now, key) for n, (user, model), key in zip(ids, users, keys)]
        )
        conn.executemany(REMEMBER_KEY, [(key, now) for key in keys])
        conn.execute("COMMIT")
        usage = []
        for n, (user, model) in zip(ids, users):
            prompt, completion = rng.randint(20, 800), rng.randint(1, 700)
            usage.append((day, user, model, prompt, completion, prompt + completion, 0 if n % 10 else prompt + completion))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(ADD_USAGE, usage)
        conn.executemany(ADD_MODEL_SPEND, [(day, model, total) for day, _, model, _, _, total, _ in usage])
        conn.executemany(DELETE_RESERVATION, [(n,) for n in ids])
        conn.execute("COMMIT")
        pairs += batch
    elapsed = time.perf_counter() - started
    conn.close()
    return pairs, elapsed


def rounds(folder: Path, tasks: int) -> tuple[list[float], list[float], bool]:
    """Pairs per second of the ledger and of raw sqlite3 with `tasks` at once, ROUNDS each, interleaved."""
    ledger_rates: list[float] = []
    raw_rates: list[float] = []
    exact = True
    for number in range(ROUNDS):
        for which in ("raw", "ledger") if number % 2 == 0 else ("ledger", "raw"):
            path = str(folder / f"{which}-{tasks}-{number}.sqlite3")
            if which == "raw":
                count, seconds = raw_pairs(path, tasks)
                raw_rates.append(count / seconds)
            else:
                count, seconds, round_exact = asyncio.run(sqlite_pairs(path, tasks))
                ledger_rates.append(count / seconds)
                exact = exact and round_exact
    return ledger_rates, raw_rates, exact


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        concurrent, raw_concurrent, exact = rounds(Path(directory), TASKS)
        alone, raw_alone, alone_exact = rounds(Path(directory), 1)
    pairs_per_s, raw_pairs_per_s = statistics.median(concurrent), statistics.median(raw_concurrent)
    latency_ms, raw_latency_ms = 1000 / statistics.median(alone), 1000 / statistics.median(raw_alone)
    ratio, latency_ratio = pairs_per_s / raw_pairs_per_s, latency_ms / raw_latency_ms
    print(
        json.dumps(
            {
                "pairs_per_s": round(pairs_per_s),
                "raw_pairs_per_s": round(raw_pairs_per_s),
                "ratio": round(ratio, 3),
                "round_ratios": [round(mine / raw, 3) for mine, raw in zip(concurrent, raw_concurrent)],
                "latency_ms": round(latency_ms, 3),
                "raw_latency_ms": round(raw_latency_ms, 3),
                "latency_ratio": round(latency_ratio, 2),
                "round_latency_ratios": [round(raw / mine, 2) for mine, raw in zip(alone, raw_alone)],
                "totals_exact": exact and alone_exact,
                "concurrent_tasks": TASKS,
                "target_ratio": TARGET_RATIO,
                "target_latency_ratio": TARGET_LATENCY_RATIO,
                "targets_met": ratio >= TARGET_RATIO and latency_ratio <= TARGET_LATENCY_RATIO and exact and alone_exact,
            }
        )
    )


if __name__ == "__main__":
    main()
