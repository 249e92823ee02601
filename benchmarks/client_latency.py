"""What the IO client adds to a chat call, against bare aiohttp and bare httpx calls to the same emulator endpoint.

The emulator runs in its own process (`iobot emulator`) so its work does not share the event loop
being measured. Calls rotate between the three paths so that drift on a noisy machine hits all of
them. Besides the latency, each call's CPU time in this process is measured: it is what caps how
many answers one process gives, and it is less noisy than the latency on a shared machine.
Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
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
    headers = {"Authorization": f"Bearer {KEY}"}
    bare_aiohttp = aiohttp.ClientSession(headers=headers)
    bare_httpx = httpx.AsyncClient(timeout=60, headers=headers)
    url = base_url + "/chat/completions"
    body = {"model": MODEL, "messages": MESSAGES}

    async def via_client() -> None:
        await client.chat(MODEL, MESSAGES)

    async def via_aiohttp() -> None:
        async with bare_aiohttp.post(url, json=body) as response:
            response.raise_for_status()
            (await response.json())["choices"][0]["message"]["content"]

    async def via_httpx() -> None:
        response = await bare_httpx.post(url, json=body)
        response.raise_for_status()
        response.json()["choices"][0]["message"]["content"]

    paths: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("client", via_client),
        ("aiohttp", via_aiohttp),
        ("httpx", via_httpx),
    ]
    timings: dict[str, list[float]] = {name: [] for name, _ in paths}
    cpu: dict[str, list[float]] = {name: [] for name, _ in paths}
    try:
        for i in range(WARMUP + CALLS):
            for name, call in paths[i % 3 :] + paths[: i % 3]:
                started, cpu_started = time.perf_counter(), time.process_time()
                await call()
                if i >= WARMUP:
                    cpu[name].append((time.process_time() - cpu_started) * 1e6)
                    timings[name].append((time.perf_counter() - started) * 1000)
    finally:
        await client.aclose()
        await bare_aiohttp.close()
        await bare_httpx.aclose()

    median = {name: statistics.median(values) for name, values in timings.items()}
    p99 = {name: percentile(values, 0.99) for name, values in timings.items()}
    cpu_us = {name: statistics.median(values) for name, values in cpu.items()}
    added = median["client"] - median["aiohttp"]
    return {
        "benchmark": "client_latency",
        "calls": CALLS,
        "client_median_ms": round(median["client"], 3),
        "client_p99_ms": round(p99["client"], 3),
        "aiohttp_median_ms": round(median["aiohttp"], 3),
        "aiohttp_p99_ms": round(p99["aiohttp"], 3),
        "httpx_median_ms": round(median["httpx"], 3),
        "httpx_p99_ms": round(p99["httpx"], 3),
        "added_median_ms": round(added, 3),
        "ratio_median": round(median["client"] / median["aiohttp"], 3),
        "ratio_p99": round(p99["client"] / p99["aiohttp"], 3),
        "client_cpu_us_per_call": round(cpu_us["client"]),
        "aiohttp_cpu_us_per_call": round(cpu_us["aiohttp"]),
        "httpx_cpu_us_per_call": round(cpu_us["httpx"]),
        "cpu_ratio": round(cpu_us["client"] / cpu_us["aiohttp"], 3),
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
