"""What building a person's Slack Home tab costs on a big day, beside the `usage` and `models` commands.

Run from the project root: `python benchmarks/slack_home.py`. The ledger holds the 200,000 usage rows of
benchmarks/usage.py (50,000 people, 4 models, today). Each round times, for one person picked at random,
the Home tab's figures and view (`home_figures` + `home_view`, what `app_home_opened` does before
`views.publish`) and two baselines through `Service.handle` on the same ledger: the person's `usage`
(their rows and budget, the Home tab's first half) and `models` (every model's total today, which the
Home tab's "limits reached" needs for a few models). The three take turns, so that the machine's load
reaches them alike. Prints one JSON line: medians and p95s in milliseconds and the ratios of the medians.
At most ROUNDS rounds, and no more than TIME_LIMIT_S seconds of them.
Targets: the Home tab's median under TARGET_MS, and under the `models` command's (TARGET_MODELS_RATIO).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from usage import PEOPLE, ROWS, seed  # the day of benchmarks/usage.py, beside this file

from adapters.slack_home import home_figures, home_view
from core.client import IOClient
from core.ledger import SQLiteLedger
from core.quotas import load_quota_table
from core.service import Request, Service, ServiceConfig

ROUNDS = 150
TIME_LIMIT_S = 60.0
TARGET_MS = 100.0
TARGET_MODELS_RATIO = 1.0


def milliseconds(samples: list[float]) -> tuple[float, float]:
    """The median and the 95th percentile of `samples` (seconds), in milliseconds."""
    ordered = sorted(samples)
    return round(statistics.median(ordered) * 1000, 2), round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 2)


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ledger.sqlite3"
        seed(path)
        ledger = await SQLiteLedger.open(str(path), user_daily_tokens=50_000)
        config = ServiceConfig(
            model="meta-llama/Llama-3.3-70B-Instruct",
            vision_model="meta-llama/Llama-3.2-90B-Vision-Instruct",
            user_requests_per_minute=ROUNDS * 2,  # every round's person may ask: the limit is not what is measured
        )
        # The API is never called: both the Home tab and `usage` read the ledger only.
        async with IOClient("http://127.0.0.1:9", "unused") as client, httpx.AsyncClient() as http:
            service = Service(client, ledger, load_quota_table(), config, http, store=ledger.store)
            people = [f"slack:T0001:U{person:07d}" for person in random.Random(7).sample(range(PEOPLE), ROUNDS)]
            seconds: dict[str, list[float]] = {"home": [], "usage": [], "models": []}
            started = time.monotonic()
            for person in people:
                if time.monotonic() - started > TIME_LIMIT_S:
                    break
                began = time.perf_counter()
                view = home_view(await home_figures(service, person))
                seconds["home"].append(time.perf_counter() - began)
                assert view["blocks"], "a Home tab with nothing on it"
                for command, expected in (("usage", "Your use today"), ("models", "Models")):
                    began = time.perf_counter()
                    reply = await service.handle(Request(user=person, text=command))
                    seconds[command].append(time.perf_counter() - began)
                    assert expected in reply.text, reply.text
        await ledger.close()
    figures: dict[str, object] = {"rows": ROWS, "rounds": len(seconds["home"])}
    for name, samples in seconds.items():
        figures[f"{name}_median_ms"], figures[f"{name}_p95_ms"] = milliseconds(samples)
    home, usage, models = (statistics.median(seconds[name]) for name in ("home", "usage", "models"))
    figures["home_to_usage"] = round(home / usage, 2)
    figures["home_to_models"] = round(home / models, 2)
    figures["targets"] = {"home_median_ms": TARGET_MS, "home_to_models": TARGET_MODELS_RATIO}
    figures["met"] = home * 1000 < TARGET_MS and home / models < TARGET_MODELS_RATIO
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
