"""Scale-out: one `iobot run` against two on the same PostgreSQL database, and PostgreSQL's ledger against SQLite's.

Run from the project root: `python benchmarks/replicas.py`. It uses the PostgreSQL server at
IOBOT_TEST_POSTGRES_URL, or starts one with `.ci/postgres start` (and stops it after), and each
measurement gets a schema of its own. Prints one JSON line:
- one_replica_rps / two_replicas_rps: answered `/io ask` requests per second, the median of ROUNDS
  interleaved rounds; each round is REQUESTS signed slash commands with CONCURRENCY awaiting their
  answer at any time, from 500 people, against the emulator in its own process with no answer delay.
  Two replicas take the requests in turn (a round-robin balancer). replicas_ratio = two / one;
- pg_pairs_per_s / sqlite_pairs_per_s: reserve + settle pairs per second by 64 tasks
  (benchmarks/ledger.py's load), for the PostgreSQL ledger and the SQLite one; pg_vs_sqlite = pg / sqlite;
- cpus: the cores this machine has, which the replicas, the emulator, PostgreSQL and the load share;
  cpu_idle_one_replica / cpu_idle_two_replicas: the share of them left idle during the rounds (median):
  near 0, the machine, not iobot, bounds what a second replica adds.
Every round is bounded in count (REQUESTS) and time (ROUND_TIMEOUT).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp import web

from benchmarks.ledger import TASKS, ledger_pairs, sqlite_pairs
from core.ledger.postgres import PostgresLedger
from tests.postgres import fresh_schema
from tests.processes import SECRET, Emulator, SlackReplica
from tests.standins.slack import SlackStandIn, command_body, signed_headers

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
REQUESTS = 600
CONCURRENCY = 64
WARMUP = 40
ROUND_TIMEOUT = 120.0
PEOPLE = 500
TARGET_RATIO = 1.6
FORM = "application/x-www-form-urlencoded"


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The server at IOBOT_TEST_POSTGRES_URL, or one started for this run."""
    if url := os.environ.get("IOBOT_TEST_POSTGRES_URL"):
        yield url
        return
    started = subprocess.run([ROOT / ".ci" / "postgres", "start"], capture_output=True, text=True, check=True).stdout
    exports = dict(line.removeprefix("export ").split("=", 1) for line in started.splitlines())
    try:
        yield exports["IOBOT_TEST_POSTGRES_URL"]
    finally:
        subprocess.run([ROOT / ".ci" / "postgres", "stop", exports["IOBOT_TEST_POSTGRES_DIR"]], check=True)


class Answers:
    """A response_url endpoint that wakes whoever waits for a request's answer."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.url = ""

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/answer/{key}", self._answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/answer/"
        return runner

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        future = self.waiting.get(request.match_info["key"])
        if future is not None and not future.done():
            future.set_result(None)
        return web.Response(text="ok")


def cpu_times() -> tuple[int, int]:
    """The machine's busy and idle CPU time so far, in clock ticks (Linux's /proc/stat)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, idle


async def load(http: aiohttp.ClientSession, answers: Answers, urls: list[str], name: str, count: int) -> tuple[float, float]:
    """Send `count` signed commands, CONCURRENCY awaiting their answer at a time: answered requests per second,
    and the share of the machine's CPU left idle meanwhile (near 0: every core was busy)."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int) -> None:
        key = f"{name}-{index}"
        body = command_body(
            f"ask Question {index} of {name}?",
            user=f"U{index % PEOPLE:04d}",
            response_url=answers.url + key,
            trigger_id=key,
        )
        async with gate:
            answered = answers.waiting[key] = asyncio.get_running_loop().create_future()
            async with http.post(urls[index % len(urls)], data=body, headers=signed_headers(body, SECRET, FORM)) as response:
                response.raise_for_status()
            await answered

    busy_before, idle_before = cpu_times()
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(index) for index in range(count))), ROUND_TIMEOUT)
    rate = count / (time.perf_counter() - started)
    busy, idle = (now - before for now, before in zip(cpu_times(), (busy_before, idle_before)))
    return rate, idle / (busy + idle)


@contextlib.asynccontextmanager
async def serving(count: int, server: str, standin: SlackStandIn, emulator: Emulator) -> AsyncIterator[list[str]]:
    """`count` replicas on a fresh schema, yielding their /slack/events URLs."""
    async with fresh_schema(server) as url:
        workdir = Path(tempfile.mkdtemp())
        env = dict(
            IOBOT_DATABASE_URL=url,
            IOINTELLIGENCE_API_KEY="benchmark-key",
            IOINTELLIGENCE_BASE_URL=emulator.base_url,
            IOBOT_USER_DAILY_TOKENS="1000000000",
            IOBOT_USER_REQUESTS_PER_MINUTE="100000",
        )
        replicas = [SlackReplica(f"replica{n}", workdir) for n in range(count)]
        try:
            for replica in replicas:
                await replica.start(standin, **env)
            yield [replica.url for replica in replicas]
        finally:
            await asyncio.gather(*(replica.stop() for replica in replicas))


async def requests_per_second(server: str) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    emulator = Emulator()
    answers = Answers()
    runner = await answers.start()
    rates: dict[int, list[float]] = {1: [], 2: []}
    idle: dict[int, list[float]] = {1: [], 2: []}
    try:
        # aiohttp rather than httpx for the load: its client costs the shared cores least.
        connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
        async with SlackStandIn(bot_token="xoxb-benchmark") as standin, aiohttp.ClientSession(connector=connector) as http:
            for round_ in range(ROUNDS):
                for count in (1, 2):
                    async with serving(count, server, standin, emulator) as urls:
                        await load(http, answers, urls, f"warm{round_}-{count}", WARMUP)
                        rate, idle_share = await load(http, answers, urls, f"round{round_}-{count}", REQUESTS)
                        rates[count].append(rate)
                        idle[count].append(idle_share)
                    answers.waiting.clear()
    finally:
        await runner.cleanup()
        emulator.stop()
    return rates, idle


async def ledger_rates(server: str) -> tuple[float, float]:
    async with fresh_schema(server) as url:
        postgres = await PostgresLedger.open(url, user_daily_tokens=10**12)
        try:
            pg_pairs, pg_seconds, pg_exact = await ledger_pairs(postgres, TASKS)
        finally:
            await postgres.close()
    with tempfile.TemporaryDirectory() as directory:
        sqlite_pairs_done, sqlite_seconds, sqlite_exact = await sqlite_pairs(os.path.join(directory, "ledger.sqlite3"), TASKS)
    assert pg_exact and sqlite_exact, "both ledgers' totals equal what the tasks settled"
    return pg_pairs / pg_seconds, sqlite_pairs_done / sqlite_seconds


async def main() -> None:
    with postgres_server() as server:
        rates, idle = await requests_per_second(server)
        pg_rate, sqlite_rate = await ledger_rates(server)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    result = {
        "benchmark": "replicas",
        "requests_per_round": REQUESTS,
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "one_replica_rps": round(one, 1),
        "two_replicas_rps": round(two, 1),
        "one_replica_rounds": [round(rate, 1) for rate in rates[1]],
        "two_replicas_rounds": [round(rate, 1) for rate in rates[2]],
        "replicas_ratio": round(two / one, 2),
        "target_ratio": TARGET_RATIO,
        "cpu_idle_one_replica": round(statistics.median(idle[1]), 3),
        "cpu_idle_two_replicas": round(statistics.median(idle[2]), 3),
        "pg_pairs_per_s": round(pg_rate),
        "sqlite_pairs_per_s": round(sqlite_rate),
        "pg_vs_sqlite": round(pg_rate / sqlite_rate, 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
