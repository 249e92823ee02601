"""`iobot usage` on a big day: 200,000 usage rows (50,000 people, 4 models), timed as an operator runs it.

Run from the project root: `python benchmarks/usage.py`. Prints one JSON line, each figure the median of
RUNS runs of the command as a subprocess on a temporary ledger (the commands take turns, so that a
change in the machine's load reaches them all alike):
- usage_s, usage_json_s: `iobot usage` and `iobot usage --json` over the ROWS rows of today;
- limits_s, models_s: `iobot limits` (OVERRIDES budgets) and `iobot models` on the same ledger;
- startup_s: the baseline, the same interpreter importing the CLI and exiting, which every command pays;
- answer_s, answer_json_s: the same two commands run once in this process, the CLI already imported:
  what the rows cost (the ledger's query and the rendering), without the interpreter's start;
- rows_printed: the rows each usage command printed (both must print all ROWS).
Targets: usage and usage --json under TARGET_USAGE_S; limits and models under TARGET_OTHER_S.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bots import cli
from core.ledger.sqlite import MIGRATIONS, PRAGMAS

ROOT = Path(__file__).resolve().parents[1]
PEOPLE = 50_000
MODELS = ("meta-llama/Llama-3.3-70B-Instruct", "Qwen/QwQ-32B", "deepseek-ai/DeepSeek-R1", "mistralai/Ministral-8B")
ROWS = PEOPLE * len(MODELS)
OVERRIDES = 2_000  # people with a budget of their own
RUNS = 3
TIMEOUT_S = 60.0  # per command run
TARGET_USAGE_S = 1.0
TARGET_OTHER_S = 0.6
IOBOT = [sys.executable, "-c", "import sys; from bots.cli import main; sys.exit(main())"]
STARTUP = [sys.executable, "-c", "import bots.cli"]


def seed(path: Path) -> None:
    """ROWS usage rows for today and OVERRIDES budgets, written the way the ledger's schema keeps them."""
    day = datetime.now(UTC).date().isoformat()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for pragma in PRAGMAS:
            db.execute(pragma)
        for number, script in enumerate(MIGRATIONS, start=1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO usage (day, user, model, prompt_tokens, completion_tokens, total_tokens, requests,"
            " estimated_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (day, f"slack:T0001:U{person:07d}", model, 300 + person % 700, 200 + person % 500, 500 + person % 1200, 3, 0)
                for person in range(PEOPLE)
                for model in MODELS
            ),
        )
        # what the ledger's settles keep beside usage: each model's spend per day (`iobot models` reads it)
        db.execute(
            "INSERT INTO model_spend (day, model, tokens) SELECT day, model, SUM(total_tokens + interrupted_tokens)"
            " FROM usage GROUP BY day, model"
        )
        db.executemany(
            "INSERT INTO user_limits (user, tokens) VALUES (?, ?)",
            ((f"slack:T0001:U{person:07d}", 100_000 + person) for person in range(0, PEOPLE, PEOPLE // OVERRIDES)),
        )
        db.execute("COMMIT")


def timed(commands: dict[str, list[str]], env: dict[str, str]) -> dict[str, tuple[float, str]]:
    """Each command's median seconds over RUNS turns, and the output of its last run (every run must succeed)."""
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    outputs: dict[str, str] = {}
    for _ in range(RUNS):
        for name, command in commands.items():
            with tempfile.TemporaryFile("w+") as output:  # as an operator redirects it: no pipe to drain
                started = time.perf_counter()
                subprocess.run(command, stdout=output, timeout=TIMEOUT_S, cwd=ROOT, env=env, check=True)
                seconds[name].append(time.perf_counter() - started)
                output.seek(0)
                outputs[name] = output.read()
    return {name: (statistics.median(seconds[name]), outputs[name]) for name in commands}


def answer_seconds(env: dict[str, str], *args: str) -> float:
    """`iobot usage <args>` run in this process, the CLI already imported: the part that grows with the rows."""
    os.environ.update(env)
    with contextlib.redirect_stdout(io.StringIO()) as output:
        started = time.perf_counter()
        code = cli.main(["usage", *args])
        seconds = time.perf_counter() - started
    lines = output.getvalue().splitlines()
    assert code == 0 and len(lines) == (ROWS if "--json" in args else ROWS + 1)  # the table has a header
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ledger.sqlite3"
        seed(path)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("IOBOT_", "IOINTELLIGENCE_"))}
        env["IOBOT_DATABASE_URL"] = f"sqlite:///{path}"
        runs = timed(
            {
                "startup": STARTUP,
                "usage": [*IOBOT, "usage"],
                "usage --json": [*IOBOT, "usage", "--json"],
                "limits": [*IOBOT, "limits"],
                "models": [*IOBOT, "models"],
            },
            env,
        )
        answer_s, answer_json_s = answer_seconds(env), answer_seconds(env, "--json")
    startup_s, usage_s, usage_json_s, limits_s, models_s = (seconds for seconds, _ in runs.values())
    table, rows = runs["usage"][1], runs["usage --json"][1]
    printed = {"table": table.count("\n") - 1, "json": len(json.loads(rows))}  # the table's header line
    print(
        json.dumps(
            {
                "rows": ROWS,
                "usage_s": round(usage_s, 3),
                "usage_json_s": round(usage_json_s, 3),
                "limits_s": round(limits_s, 3),
                "models_s": round(models_s, 3),
                "startup_s": round(startup_s, 3),
                "answer_s": round(answer_s, 3),
                "answer_json_s": round(answer_json_s, 3),
                "rows_printed": printed,
                "target_usage_s": TARGET_USAGE_S,
                "target_other_s": TARGET_OTHER_S,
                "targets_met": max(usage_s, usage_json_s) < TARGET_USAGE_S
                and max(limits_s, models_s) < TARGET_OTHER_S
                and printed == {"table": ROWS, "json": ROWS},
            }
        )
    )


if __name__ == "__main__":
    main()
