"""The process the crash test kills: reserves and settles in a loop until SIGKILL arrives.

Usage: python tests/ledger_worker.py <db>. Prints, flushed, one line per event the test checks:
`held <user>` for a reservation it keeps open on purpose, `settled <user> <model> <tokens>` once a
settle has returned. Each settle charges a person of its own, so each line names one usage row.
It stops by itself after ROUNDS so that a failed test never leaves it running.
"""

from __future__ import annotations

import asyncio
import sys

from core.ledger import SQLiteLedger

TASKS = 16
ROUNDS = 2_000  # per task
HELD = 5
MODELS = ("meta-llama/Llama-3.3-70B-Instruct", "Qwen/QwQ-32B")


async def main(path: str) -> None:
    ledger = await SQLiteLedger.open(path, user_daily_tokens=10**9)
    for n in range(HELD):
        await ledger.reserve(user=f"console:held{n}", model=MODELS[0], tokens=1_000, model_limit=None)
        print(f"held console:held{n}", flush=True)

    async def work(task: int) -> None:
        for n in range(ROUNDS):
            user = f"console:t{task}-{n}"
            reservation = await ledger.reserve(user=user, model=MODELS[n % 2], tokens=300, model_limit=10**9)
            prompt, completion = 100 + task, n % 200
            await ledger.settle(reservation, prompt_tokens=prompt, completion_tokens=completion, estimated=n % 3 == 0)
            print(f"settled {user} {reservation.model} {prompt + completion}", flush=True)

    await asyncio.gather(*(work(task) for task in range(TASKS)))
    await ledger.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
