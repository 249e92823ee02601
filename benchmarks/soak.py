"""50,000 requests through a real `iobot run` (console path) against `iobot emulator` in another process.

Resident memory of both processes is sampled as it goes; what matters is that memory after the last
request stays within 10% of memory after the first tenth (no leak per request, in the service or in
the emulator). The person's budget, rate limit and the model quotas are raised so that every request
is really answered. SOAK_REQUESTS sets the count; SOAK_SECONDS bounds the time, and a run cut short
by it measures up to where it stopped (and says so). Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REQUESTS = int(os.environ.get("SOAK_REQUESTS", 50_000))
SECONDS = float(os.environ.get("SOAK_SECONDS", 900))
WARM = REQUESTS // 10
SAMPLE_EVERY = max(1, REQUESTS // 10)
TARGET_GROWTH = 0.10
IOBOT = [sys.executable, "-c", "import sys; from bots.cli import main; sys.exit(main())"]
# Each line's reply has no blank line inside (a blank line ends a reply on the console), and a
# word by which the reply is recognised, so that reading can never drift from writing.
LINES = [
    ("ask What is the capital of France?", "you asked"),
    ("sentiment I love how quickly this works", "Sentiment:"),
    ("moderate Have a lovely day", "Nothing crossed"),
    ("translate german Good morning, everyone", "German:"),
    ("classify bug,feature The app crashes when I press save", "Label:"),
    ("entities Ada Lovelace met Charles Babbage in London in June 1833", "People:"),
    ("reason What is 12 times 12?", "Answer:"),
    ("help", "Commands"),
]


def rss_mb(pid: int) -> float:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    if found is None:
        raise SystemExit(f"process {pid} shows no resident memory in /proc")
    return int(found.group(1)) / 1024


def generous_quota_file(directory: Path) -> Path:
    """The built-in table with every API quota raised, so the soak measures memory, not refusals."""
    built_in = tomllib.loads((Path(__file__).resolve().parents[1] / "core" / "quotas.toml").read_text())
    lines = []
    for row in built_in["model"]:
        lines.append("[[model]]")
        for key, value in row.items():
            value = 10**12 if key == "api_daily_tokens" else value
            lines.append(f"{key} = {json.dumps(value)}")
    path = directory / "quotas.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def read_reply(stdout) -> str:
    lines = []
    while (line := stdout.readline()) not in ("\n", ""):
        lines.append(line)
    return "".join(lines)


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="iobot-soak-"))
    emulator = subprocess.Popen([*IOBOT, "emulator", "--port", "0"], stdout=subprocess.PIPE, text=True)
    assert emulator.stdout is not None
    announced = re.search(r"http://\S+", emulator.stdout.readline())
    if announced is None:
        raise SystemExit("the emulator did not say where it listens")
    base_url = announced.group(0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOBOT_", "IOINTELLIGENCE_", "SLACK_", "DISCORD_"))}
    env.update(
        IOINTELLIGENCE_API_KEY="soak",
        IOINTELLIGENCE_BASE_URL=base_url,
        IOBOT_DATABASE_URL=f"sqlite:///{workdir / 'ledger.sqlite3'}",
        IOBOT_QUOTA_FILE=str(generous_quota_file(workdir)),
        IOBOT_USER_DAILY_TOKENS=str(10**12),
        IOBOT_USER_REQUESTS_PER_MINUTE=str(10**6),
        IOBOT_HOST="127.0.0.1",
        IOBOT_PORT="0",
        IOBOT_LOG_LEVEL="WARNING",
    )
    bot = subprocess.Popen([*IOBOT, "run"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=workdir, env=env)
    assert bot.stdin is not None and bot.stdout is not None
    bot_rss: dict[int, float] = {}
    emulator_rss: dict[int, float] = {}
    answered = 0
    started = time.perf_counter()
    try:
        for i in range(1, REQUESTS + 1):
            if time.perf_counter() - started > SECONDS and i > WARM:
                break
            line, expected = LINES[i % len(LINES)]
            bot.stdin.write(line + "\n")
            bot.stdin.flush()
            reply = read_reply(bot.stdout)
            if expected not in reply:
                raise SystemExit(f"request {i} ({line!r}) got an unexpected reply: {reply!r}")
            answered += 1
            if i == WARM or i % SAMPLE_EVERY == 0:
                bot_rss[i] = round(rss_mb(bot.pid), 1)
                emulator_rss[i] = round(rss_mb(emulator.pid), 1)
        seconds = time.perf_counter() - started
        bot_rss[answered] = round(rss_mb(bot.pid), 1)
        emulator_rss[answered] = round(rss_mb(emulator.pid), 1)
        bot.stdin.close()
        exit_code = bot.wait(timeout=60)
    finally:
        bot.kill()
        emulator.terminate()
        emulator.wait(timeout=10)
    growth = bot_rss[answered] / bot_rss[WARM] - 1
    emulator_growth = emulator_rss[answered] / emulator_rss[WARM] - 1
    print(
        json.dumps(
            {
                "benchmark": "soak",
                "requests": REQUESTS,
                "answered": answered,
                "cut_short_by_time": answered < REQUESTS,
                "seconds": round(seconds, 1),
                "requests_per_s": round(answered / seconds, 1),
                "warm_after": WARM,
                "rss_mb": bot_rss,
                "emulator_rss_mb": emulator_rss,
                "growth_pct": round(growth * 100, 2),
                "emulator_growth_pct": round(emulator_growth * 100, 2),
                "target_growth_pct": TARGET_GROWTH * 100,
                "target_met": answered == REQUESTS and max(growth, emulator_growth) <= TARGET_GROWTH,
                "exit_code": exit_code,
            }
        )
    )


if __name__ == "__main__":
    main()
