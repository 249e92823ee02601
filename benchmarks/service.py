"""Answered requests per second through `Service.handle`, beside a bare aiohttp loop making the same API calls.

Both paths run 64 requests at a time against the emulator in its own process (`iobot emulator`), so
the emulator's work is not on the loop being measured. The service path is the whole of it: the
command grammar, the rate limit, a real SQLite ledger in a temporary directory (reserve, settle),
the IO client and the reply. The bare path posts the same `/chat/completions` body with aiohttp and
reads the answer's text. The two alternate in rounds so that drift on a noisy machine hits both;
the figures are the medians of the rounds. The CPU time per answered request (this process, its
threads included: the ledger's SQLite work counts) is less noisy than the rates on a shared
machine. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

from core.client import IOClient
from core.ledger import SQLiteLedger
from core.quotas import QuotaTable, load_quota_table
from core.service import SYSTEM_PROMPT, Request, Service, ServiceConfig
from emulator.process import start_emulator_process

REQUESTS = int(os.environ.get("SERVICE_REQUESTS", 3000))  # per path, over all rounds
ROUNDS = 3
CONCURRENCY = 64
WARMUP = 200
TIME_CAP = 60.0  # seconds per round and path: a slow machine stops early and reports what it did
MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"
QUESTION = "What is the capital of France?"
MAX_TOKENS = 1024
KEY = "benchmark-key"
TARGET_RATIO = 0.5

Call = Callable[[int], Awaitable[bool]]  # request number -> answered?


def generous_quotas() -> QuotaTable:
    """The built-in table with every API quota raised, so that the benchmark measures answers, not refusals."""
    return QuotaTable([row.model_copy(update={"api_daily_tokens": 10**12}) for row in load_quota_table()])


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_load(call: Call, count: int, time_cap: float = TIME_CAP) -> tuple[float, float, int]:
    """`count` calls, `CONCURRENCY` at a time, stopped at `time_cap`: (answered/s, CPU us per answer, answered)."""
    numbers = iter(range(count))
    answered = 0
    deadline = time.perf_counter() + time_cap

    async def worker() -> None:
        nonlocal answered
        for number in numbers:
            if time.perf_counter() > deadline:
                return
            ok = await call(number)  # awaited first: `answered += await ...` would lose concurrent counts
            answered += ok

    started, cpu_started = time.perf_counter(), cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu_us = (cpu_seconds() - cpu_started) * 1e6 / max(answered, 1)
    return answered / (time.perf_counter() - started), cpu_us, answered


async def measure(base_url: str, workdir: Path) -> dict:
    ledger = await SQLiteLedger.open(str(workdir / "ledger.sqlite3"), user_daily_tokens=10**12)
    client = IOClient(base_url, KEY)
    downloads = httpx.AsyncClient()
    config = ServiceConfig(model=MODEL, vision_model=VISION_MODEL, max_tokens=MAX_TOKENS, user_requests_per_minute=10**9)
    service = Service(client, ledger, generous_quotas(), config, downloads, store=ledger.store)
    bare = aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}, connector=aiohttp.TCPConnector(limit=100))
    url = base_url + "/chat/completions"
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}],
        "max_tokens": MAX_TOKENS,
    }

    async def via_service(number: int) -> bool:
        reply = await service.handle(Request(user=f"console:person{number % CONCURRENCY}", text=QUESTION))
        return reply.outcome == "ok"

    async def via_aiohttp(number: int) -> bool:
        async with bare.post(url, json=body) as response:
            data = await response.json()
            return response.status == 200 and bool(data["choices"][0]["message"]["content"])

    gc.freeze()  # as `iobot run` does once started (bots/app.py): the collector's full passes skip what start-up made
    rates: dict[str, list[float]] = {"service": [], "aiohttp": []}
    cpu: dict[str, list[float]] = {"service": [], "aiohttp": []}
    answered = {"service": 0, "aiohttp": 0}
    try:
        for warm in (via_service, via_aiohttp):
            await run_load(warm, WARMUP)
        for round_number in range(ROUNDS):
            paths = [("service", via_service), ("aiohttp", via_aiohttp)]
            for name, call in paths if round_number % 2 == 0 else reversed(paths):
                rate, cpu_us, done = await run_load(call, REQUESTS // ROUNDS)
                rates[name].append(rate)
                cpu[name].append(cpu_us)
                answered[name] += done
    finally:
        await bare.close()
        await downloads.aclose()
        await client.aclose()
        await ledger.close()

    service_rate, bare_rate = statistics.median(rates["service"]), statistics.median(rates["aiohttp"])
    ratio = service_rate / bare_rate
    return {
        "benchmark": "service",
        "concurrency": CONCURRENCY,
        "requests_per_path": REQUESTS,
        "service_answered": answered["service"],
        "aiohttp_answered": answered["aiohttp"],
        "service_per_s": round(service_rate, 1),
        "aiohttp_per_s": round(bare_rate, 1),
        "service_rounds_per_s": [round(rate, 1) for rate in rates["service"]],
        "aiohttp_rounds_per_s": [round(rate, 1) for rate in rates["aiohttp"]],
        "ratio": round(ratio, 3),
        "service_cpu_us_per_request": round(statistics.median(cpu["service"])),
        "aiohttp_cpu_us_per_request": round(statistics.median(cpu["aiohttp"])),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
    }


def main() -> None:
    process, base_url = start_emulator_process()
    try:
        with tempfile.TemporaryDirectory(prefix="iobot-service-bench-") as workdir:
            print(json.dumps(asyncio.run(measure(base_url, Path(workdir)))))
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    main()
