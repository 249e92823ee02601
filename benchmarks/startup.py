"""How long `iobot usage`, `iobot limits` and `iobot models` take from start to answer, on a small ledger.

Run from the project root: `python benchmarks/startup.py`. Each command runs as an operator runs it, a
new interpreter each time, ROUNDS times; the commands and two baselines take turns, so that a busy
machine slows all of them alike. The baselines: a bare interpreter (`python -c pass`, the floor no
change to iobot can go under) and one importing the settings alone (pydantic and pydantic-settings,
which every command needs to read its configuration). With STARTUP_COMPARE_TREE set to another
checkout of iobot (say, of an older commit), its three commands take their turns too (`<name>@compare`).

Prints one JSON line: the median wall-clock seconds, the median CPU seconds (user and system: what a
loaded machine inflates least), the ratio of each command's wall time to the bare interpreter's, and
whether every command's median wall time is under TARGET_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
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
COMMANDS = ("usage", "limits", "models")
COMPARE_TREE = os.environ.get("STARTUP_COMPARE_TREE")
# name: (command, the source tree it imports iobot from)
RUNS = {
    "python": ([sys.executable, "-c", "pass"], ROOT),
    "settings_import": ([sys.executable, "-c", "import core.settings"], ROOT),
    **{name: ([*IOBOT, name], ROOT) for name in COMMANDS},
    **({f"{name}@compare": ([*IOBOT, name], Path(COMPARE_TREE).resolve()) for name in COMMANDS} if COMPARE_TREE else {}),
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


def seconds(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run of `command`."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, timeout=60)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="iobot-startup-") as directory:
        workdir = Path(directory)
        asyncio.run(small_ledger(workdir / "ledger.sqlite3"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IOBOT_", "IOINTELLIGENCE_", "SLACK_", "DISCORD_"))}
        env["IOBOT_DATABASE_URL"] = f"sqlite:///{workdir / 'ledger.sqlite3'}"
        envs = {name: {**env, "PYTHONPATH": str(tree)} for name, (_, tree) in RUNS.items()}
        for name, (command, _) in RUNS.items():  # warm the file cache and the bytecode before measuring
            seconds(command, envs[name], workdir)
        wall: dict[str, list[float]] = {name: [] for name in RUNS}
        cpu: dict[str, list[float]] = {name: [] for name in RUNS}
        for _ in range(ROUNDS):
            for name, (command, _) in RUNS.items():
                wall_s, cpu_s = seconds(command, envs[name], workdir)
                wall[name].append(wall_s)
                cpu[name].append(cpu_s)
    medians = {name: round(statistics.median(values), 3) for name, values in wall.items()}
    print(
        json.dumps(
            {
                "benchmark": "startup",
                "rounds": ROUNDS,
                "median_s": medians,
                "median_cpu_s": {name: round(statistics.median(values), 3) for name, values in cpu.items()},
                "ratio_to_python": {name: round(medians[name] / medians["python"], 1) for name in RUNS if name != "python"},
                "target_s": TARGET_SECONDS,
                "target_met": all(medians[name] < TARGET_SECONDS for name in COMMANDS),
            }
        )
    )


if __name__ == "__main__":
    main()
