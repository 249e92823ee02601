"""What reading a person's model and a channel's instructions from the store costs each question.

Every chat request now reads two settings from the store: the person's model and the channel's
instructions. This runs the same questions through `Service.handle` (real SQLite ledger, emulator in
its own process, 64 at a time) two ways: with the ledger's own SQLite store, and with the same
settings answered from a dict in memory (what the reads would cost if they were free). Every person
picked a model and the channel has instructions, so both ways send the same prompts. The two
alternate in rounds so that drift on a noisy machine hits both; the figures are the medians of the
rounds, with this process's CPU time per answered request. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.service import Call, generous_quotas, run_load
from core.client import IOClient
from core.ledger import SQLiteLedger, Store
from core.ledger.store import CLAIM_SECONDS
from core.service import INSTRUCTIONS_SETTING, MODEL_SETTING, Request, Service, ServiceConfig
from emulator.process import start_emulator_process

REQUESTS = int(os.environ.get("CHOICES_REQUESTS", 3000))  # per path, over all rounds
ROUNDS = 3
CONCURRENCY = 64
WARMUP = 200
TIME_CAP = 30.0  # seconds per round and path: a slow machine stops early and reports what it did
MODEL = "meta-llama/Llama-3.3-70B-Instruct"
CHOSEN = "Qwen/Qwen3-235B-A22B-FP8"
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"
CHANNEL = "slack:T1:C1"
INSTRUCTIONS = "Answer in plain English, in three sentences at most."
QUESTION = "What is the capital of France?"
KEY = "benchmark-key"
TARGET_RATIO = 0.9  # the reads may cost at most a tenth of the answered rate


class SettingsInMemory:
    """The ledger's store, but with settings answered from a dict: the reads at no cost."""

    def __init__(self, store: Store, settings: dict[tuple[str, str], str]) -> None:
        self._store = store
        self._settings = settings

    async def claim(self, key: str, *, ttl: float = CLAIM_SECONDS) -> bool:
        return await self._store.claim(key, ttl=ttl)

    async def follow_thread(self, thread: str) -> None:
        await self._store.follow_thread(thread)

    async def follows_thread(self, thread: str) -> bool:
        return await self._store.follows_thread(thread)

    async def take_request(self, person: str, per_minute: int) -> float:
        return await self._store.take_request(person, per_minute)

    async def setting(self, scope: str, name: str) -> str | None:
        return self._settings.get((scope, name))

    async def set_setting(self, scope: str, name: str, value: str | None) -> None:
        raise NotImplementedError("the benchmark only reads settings")

    async def record_refusal(self, day: date, reason: str) -> None:
        await self._store.record_refusal(day, reason)

    async def refusals(self, day: date) -> dict[str, int]:
        return await self._store.refusals(day)


async def measure(base_url: str, workdir: Path) -> dict:
    ledger = await SQLiteLedger.open(str(workdir / "ledger.sqlite3"), user_daily_tokens=10**12)
    client = IOClient(base_url, KEY)
    downloads = httpx.AsyncClient()
    config = ServiceConfig(model=MODEL, vision_model=VISION_MODEL, user_requests_per_minute=10**9)
    people = [f"console:person{n}" for n in range(CONCURRENCY)]
    settings = {(person, MODEL_SETTING): CHOSEN for person in people} | {(CHANNEL, INSTRUCTIONS_SETTING): INSTRUCTIONS}
    for (scope, name), value in settings.items():
        await ledger.store.set_setting(scope, name, value)
    services = {
        "sqlite_store": Service(client, ledger, generous_quotas(), config, downloads, store=ledger.store),
        "in_memory": Service(
            client, ledger, generous_quotas(), config, downloads, store=SettingsInMemory(ledger.store, settings)
        ),
    }

    def asking(service: Service) -> Call:
        async def call(number: int) -> bool:
            reply = await service.handle(Request(user=people[number % CONCURRENCY], text=QUESTION, channel=CHANNEL))
            return reply.outcome == "ok" and reply.model == CHOSEN

        return call

    rates: dict[str, list[float]] = {name: [] for name in services}
    cpu: dict[str, list[float]] = {name: [] for name in services}
    answered = dict.fromkeys(services, 0)
    try:
        for service in services.values():
            await run_load(asking(service), WARMUP, TIME_CAP)
        for round_number in range(ROUNDS):
            order = list(services.items()) if round_number % 2 == 0 else list(reversed(services.items()))
            for name, service in order:
                rate, cpu_us, done = await run_load(asking(service), REQUESTS // ROUNDS, TIME_CAP)
                rates[name].append(rate)
                cpu[name].append(cpu_us)
                answered[name] += done
    finally:
        await downloads.aclose()
        await client.aclose()
        await ledger.close()

    store_rate, memory_rate = statistics.median(rates["sqlite_store"]), statistics.median(rates["in_memory"])
    ratio = store_rate / memory_rate
    return {
        "benchmark": "choices",
        "concurrency": CONCURRENCY,
        "requests_per_path": REQUESTS,
        "answered": answered,
        "sqlite_store_per_s": round(store_rate, 1),
        "in_memory_per_s": round(memory_rate, 1),
        "rounds_per_s": {name: [round(rate, 1) for rate in values] for name, values in rates.items()},
        "ratio": round(ratio, 3),
        "sqlite_store_cpu_us_per_request": round(statistics.median(cpu["sqlite_store"])),
        "in_memory_cpu_us_per_request": round(statistics.median(cpu["in_memory"])),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
    }


def main() -> None:
    process, base_url = start_emulator_process()
    try:
        with tempfile.TemporaryDirectory(prefix="iobot-choices-bench-") as workdir:
            print(json.dumps(asyncio.run(measure(base_url, Path(workdir)))))
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    main()
