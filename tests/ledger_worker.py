"""The process the crash test kills: the real Service on the real SQLite ledger, answering numbered events.

Usage: python tests/ledger_worker.py <db> <api base url>. Reads event numbers from stdin, one a line,
and answers each at once (concurrently) as a platform would deliver it: person `console:e<n>`, text
`ask question number <n>`, request id `Ev<n>`. When the Service returns a reply it prints, flushed,
`answer <n> <outcome> <tokens>`: that print stands for posting the reply on the platform. It exits
once stdin ends and every event has its answer, or when it is killed.
"""

from __future__ import annotations

import asyncio
import sys

import httpx

from core.client import IOClient
from core.ledger import SQLiteLedger
from core.quotas import load_quota_table
from core.service import Request, Service, ServiceConfig

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
API_KEY = "crash-test-key"


async def main(path: str, base_url: str) -> None:
    ledger = await SQLiteLedger.open(path, user_daily_tokens=10**9)
    config = ServiceConfig(model=MODEL, vision_model=MODEL, max_tokens=256, max_concurrent=64)
    async with IOClient(base_url, API_KEY, timeout=10, max_retries=0) as client, httpx.AsyncClient() as http:
        service = Service(client, ledger, load_quota_table(), config, http, store=ledger.store)

        async def answer(n: int) -> None:
            request = Request(user=f"console:e{n}", text=f"ask question number {n}", request_id=f"Ev{n}")
            reply = await service.handle(request)
            tokens = reply.usage.total_tokens if reply.usage else 0
            print(f"answer {n} {reply.outcome} {tokens}", flush=True)

        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        answering = [asyncio.create_task(answer(int(line))) async for line in reader]
        await asyncio.gather(*answering)
    await ledger.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
