"""What the IO client adds to a chat call, against a bare httpx call to the same emulator endpoint.

The emulator runs in its own process (`iobot emulator`) so its work does not share the event loop
being measured. Calls alternate between the two paths so that drift on a noisy machine hits both.
Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx

from core.client import IOClient, Message
from emulator.process import start_emulator_process

CALLS = 2000
WARMUP = 200
MODEL = "meta-llama/Llama-3.3-70B-Instruct"
MESSAGES: list[Message] = [{"role": "user", "content": "What is the capital of France?"}]
KEY = "benchmark-key"
TARGET_ADDED_MEDIAN_MS = 1.5


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(base_url: str) -> dict:
    client = IOClient(base_url, KEY)
    bare = httpx.AsyncClient(timeout=60)
    url = base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "messages": MESSAGES}

    async def via_client() -> None:
        await client.chat(MODEL, MESSAGES)

    async def via_httpx() -> None:
        response = await bare.post(url, json=body, headers=headers)
        response.raise_for_status()
        response.json()["choices"][0]["message"]["content"]

    timings: dict[str, list[float]] = {"client": [], "bare": []}
    for i in range(WARMUP + CALLS):
        for name, call in (
            (("client", via_client), ("bare", via_httpx)) if i % 2 else (("bare", via_httpx), ("client", via_client))
        ):
            started = time.perf_counter()
            await call()
            if i >= WARMUP:
                timings[name].append((time.perf_counter() - started) * 1000)
    await client.aclose()
    await bare.aclose()

    client_median, bare_median = statistics.median(timings["client"]), statistics.median(timings["bare"])
    client_p99, bare_p99 = percentile(timings["client"], 0.99), percentile(timings["bare"], 0.99)
    added = client_median - bare_median
    return {
        "benchmark": "client_latency",
        "calls": CALLS,
        "client_median_ms": round(client_median, 3),
        "client_p99_ms": round(client_p99, 3),
        "bare_median_ms": round(bare_median, 3),
        "bare_p99_ms": round(bare_p99, 3),
        "added_median_ms": round(added, 3),
        "ratio_median": round(client_median / bare_median, 3),
        "ratio_p99": round(client_p99 / bare_p99, 3),
        "target_added_median_ms": TARGET_ADDED_MEDIAN_MS,
        "target_met": added < TARGET_ADDED_MEDIAN_MS,
    }


def main() -> None:
    process, base_url = start_emulator_process()
    try:
        print(json.dumps(asyncio.run(measure(base_url))))
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    main()
