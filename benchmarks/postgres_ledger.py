"""PostgreSQL ledger speed: reserve-and-settle pairs against the bare round trips they are made of.

Run from the project root with a server (`eval "$(.ci/postgres start)"`), or with
IOBOT_TEST_POSTGRES_URL / a URL as the first argument: `python benchmarks/postgres_ledger.py [URL]`.
Each run works in a fresh schema, dropped afterwards. Prints one JSON line:
- pairs_per_s: reserve + settle pairs per second, TASKS concurrent tasks on one `PostgresLedger`
  (one replica, its pool of POOL connections), each reserve with an idempotency key;
- bare_pairs_per_s: the same tasks on an asyncpg pool of the same size in the same run, each pair two
  `SELECT 1` round trips: what the network and the server cost before any work, the floor for two calls;
- ratio: pairs_per_s / bare_pairs_per_s;
- two_replicas_pairs_per_s: the same load split over two `PostgresLedger`s (two pools) on one database;
- latency_ms / bare_latency_ms: one task alone, milliseconds per pair; latency_ratio their quotient;
- totals_exact: whether the ledger's totals equal, to the token, what the tasks settled.
Each phase runs at most SECONDS and at most MAX_PAIRS pairs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.ledger.postgres import PostgresLedger
from tests.postgres import fresh_schema

TASKS = 64
POOL = 10
SECONDS = 2.5
MAX_PAIRS = 50_000  # a bound, far beyond what SECONDS allows
USERS = 500
MODELS = ("meta-llama/Llama-3.3-70B-Instruct", "Qwen/QwQ-32B", "deepseek-ai/DeepSeek-R1", "mistralai/Ministral-8B")


async def ledger_pairs(ledgers: list[PostgresLedger], tasks: int) -> tuple[int, float, int]:
    """Pairs settled by `tasks` concurrent tasks spread over `ledgers`, the seconds they took, and the tokens settled."""
    settled = [0] * tasks
    pairs = [0] * tasks
    deadline = time.perf_counter() + SECONDS

    async def work(task: int) -> None:
        ledger = ledgers[task % len(ledgers)]
        rng = random.Random(task)
        for n in range(MAX_PAIRS // tasks):
            if time.perf_counter() > deadline:
                return
            reservation = await ledger.reserve(
                user=f"discord:{rng.randrange(USERS)}",
                model=rng.choice(MODELS),
                tokens=1_000,
                model_limit=10**12,
                idempotency_key=f"{task}-{n}-{secrets.token_hex(4)}",
            )
            await ledger.settle(reservation, prompt_tokens=300, completion_tokens=200, estimated=False)
            settled[task] += 500
            pairs[task] += 1

    started = time.perf_counter()
    await asyncio.gather(*(work(task) for task in range(tasks)))
    return sum(pairs), time.perf_counter() - started, sum(settled)


async def bare_pairs(pool: asyncpg.Pool, tasks: int) -> tuple[int, float]:
    """Pairs of two `SELECT 1` round trips by `tasks` concurrent tasks on `pool`, and the seconds they took."""
    pairs = [0] * tasks
    deadline = time.perf_counter() + SECONDS

    async def work(task: int) -> None:
        for _ in range(MAX_PAIRS // tasks):
            if time.perf_counter() > deadline:
                return
            await pool.fetchval("SELECT 1")
            await pool.fetchval("SELECT 1")
            pairs[task] += 1

    started = time.perf_counter()
    await asyncio.gather(*(work(task) for task in range(tasks)))
    return sum(pairs), time.perf_counter() - started


async def main(server: str) -> dict:
    async with fresh_schema(server) as url:
        first = await PostgresLedger.open(url, user_daily_tokens=10**12, pool_size=POOL)
        second = await PostgresLedger.open(url, user_daily_tokens=10**12, pool_size=POOL)
        pool = await asyncpg.create_pool(url, min_size=POOL, max_size=POOL)
        try:
            rates, bare_rates, latencies, bare_latencies, two = [], [], [], [], []
            settled_total = 0
            for _ in range(3):  # interleaved, so that the machine's load falls on both alike
                pairs, seconds, settled = await ledger_pairs([first], TASKS)
                rates.append(pairs / seconds)
                settled_total += settled
                pairs, seconds = await bare_pairs(pool, TASKS)
                bare_rates.append(pairs / seconds)
                pairs, seconds, settled = await ledger_pairs([first], 1)
                latencies.append(seconds / pairs * 1000)
                settled_total += settled
                pairs, seconds = await bare_pairs(pool, 1)
                bare_latencies.append(seconds / pairs * 1000)
                pairs, seconds, settled = await ledger_pairs([first, second], TASKS)
                two.append(pairs / seconds)
                settled_total += settled
            totals_exact = await first.used_today() == settled_total
        finally:
            await pool.close()
            await first.close()
            await second.close()
    rate, bare_rate = statistics.median(rates), statistics.median(bare_rates)
    latency, bare_latency = statistics.median(latencies), statistics.median(bare_latencies)
    return {
        "tasks": TASKS,
        "pool": POOL,
        "pairs_per_s": round(rate),
        "bare_pairs_per_s": round(bare_rate),
        "ratio": round(rate / bare_rate, 2),
        "two_replicas_pairs_per_s": round(statistics.median(two)),
        "latency_ms": round(latency, 3),
        "bare_latency_ms": round(bare_latency, 3),
        "latency_ratio": round(latency / bare_latency, 2),
        "totals_exact": totals_exact,
    }


if __name__ == "__main__":
    server = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("IOBOT_TEST_POSTGRES_URL", "")
    if not server:
        sys.exit('give a PostgreSQL URL, or start a server: eval "$(.ci/postgres start)"')
    print(json.dumps(asyncio.run(main(server))))
