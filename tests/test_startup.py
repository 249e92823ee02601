"""The admin commands start quickly: `iobot usage`, `limits` and `models` load no server, chat library or emulator.

Checked in a fresh interpreter (this one has everything loaded already) by the modules each command
leaves behind; how long a start takes is measured in benchmarks/startup.py, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.ledger import SQLiteLedger

# What takes most of a second to load and none of these commands needs.
HEAVY = [
    "aiohttp",
    "discord",
    "slack_bolt",
    "slack_sdk",
    "emulator",
    "adapters",
    "httpx",
    "PIL",
    "asyncpg",
    "rich",
    "prompt_toolkit",
]
RUN_AND_REPORT = """
import json, sys
from bots.cli import main
code = main(sys.argv[1:])
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.stdin.read())))
print(json.dumps({"code": code, "loaded": loaded}))
"""


def run_and_report(workdir: Path, *args: str) -> dict:
    """Run `iobot <args>` in a fresh interpreter; its exit code and which of HEAVY it loaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOBOT_", "IOINTELLIGENCE_", "SLACK_", "DISCORD_"))}
    env["IOBOT_DATABASE_URL"] = f"sqlite:///{workdir / 'ledger.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, *args],
        input=json.dumps(HEAVY),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("args", [["usage"], ["usage", "--json"], ["limits"], ["limits", "console:ana", "900"], ["models"]])
async def test_admin_commands_load_no_server_chat_library_or_emulator(tmp_path: Path, args: list[str]) -> None:
    ledger = await SQLiteLedger.open(str(tmp_path / "ledger.sqlite3"), user_daily_tokens=50_000)
    await ledger.close()
    report = run_and_report(tmp_path, *args)
    assert report == {"code": 0, "loaded": []}


def test_the_check_sees_what_run_loads(tmp_path: Path) -> None:
    """The check above would pass vacuously if the names were wrong: `check --emulator` loads most of them."""
    report = run_and_report(tmp_path, "check", "--emulator")
    assert report["code"] == 0 and {"aiohttp", "emulator", "httpx"} <= set(report["loaded"])
