"""How long `iobot usage`, `iobot limits` and `iobot models` take from start to answer, on a small ledger.

Run from the project root: `python benchmarks/startup.py`. Each command runs as an operator runs it, a
new interpreter each time, ROUNDS times; the commands and two baselines take turns, so that a busy
machine slows all of them alike. The baselines: a bare interpreter (`python -c pass`, the floor no
change to iobot can go under) and one importing the settings alone (pydantic and pydantic-settings,
which every command needs to read its configuration). Prints one JSON line of median seconds, the
ratio of each command to the bare interpreter, and whether every median is under TARGET_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.ledger import SQLiteLedger  # noqa: E402  (after the path is set)

ROUNDS = int(os.environ.get("STARTUP_ROUNDS", 9))
TARGET_SECONDS = 0.6
MODEL = "meta-llama/Llama-3.3-70B-Instruct"
IOBOT = [sys.executable, "-c", "import sys; from bots.cli import main; sys.exit(main())"]
RUNS = {
    "python": [sys.executable, "-c", "pass"],
    "settings_import": [sys.executable, "-c", "import core.settings"],
    "usage": [*IOBOT, "usage"],
    "limits": [*IOBOT, "limits"],
    "models": [*IOBOT, "models"],
}


async def small_ledger(path: Path) -> None:
    """A ledger with a day's use by a few people and one budget override, as a small team's would be."""
    ledger = await SQLiteLedger.open(str(path), user_daily_tokens=50_000)
    for person in range(5):
        for _ in range(3):
            reservation = await ledger.reserve(user=f"console:person{person}", model=MODEL, tokens=300, model_limit=None)
            await ledger.settle(reservation, prompt_tokens=120, completion_tokens=80, estimated=False)
    await ledger.set_user_limit("console:person0", 100_000)
    await ledger.close()


def seconds(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, timeout=60)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="iobot-startup-") as directory:
        workdir = Path(directory)
        asyncio.run(small_ledger(workdir / "ledger.sqlite3"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IOBOT_", "IOINTELLIGENCE_", "SLACK_", "DISCORD_"))}
        env.update(IOBOT_DATABASE_URL=f"sqlite:///{workdir / 'ledger.sqlite3'}", PYTHONPATH=str(ROOT))
        for command in RUNS.values():  # warm the file cache and the bytecode before measuring
            seconds(command, env, workdir)
        times: dict[str, list[float]] = {name: [] for name in RUNS}
        for _ in range(ROUNDS):
            for name, command in RUNS.items():
                times[name].append(seconds(command, env, workdir))
    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    commands = ("usage", "limits", "models")
    print(
        json.dumps(
            {
                "benchmark": "startup",
                "rounds": ROUNDS,
                "median_s": medians,
                "ratio_to_python": {name: round(medians[name] / medians["python"], 1) for name in commands},
                "over_settings_import_s": {name: round(medians[name] - medians["settings_import"], 3) for name in commands},
                "target_s": TARGET_SECONDS,
                "target_met": all(medians[name] < TARGET_SECONDS for name in commands),
            }
        )
    )


if __name__ == "__main__":
    main()
