"""`iobot` as a person runs it: a real subprocess, lines piped in, replies on stdout."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.ledger import SQLiteLedger

from .conftest import piped

LINES = [
    "ask What is the capital of France?",
    "summarize 20 The quick brown fox jumps over the lazy dog. It was a sunny day.",
    "translate french Good morning",
    "sentiment I love this wonderful product",
    "classify bug,feature The app crashes when I save",
    "moderate You are a lovely person",
    "entities Ada Lovelace met Charles Babbage in London",
    "reason What is 12 times 12?",
    "agents",
    "models",
    "help",
    "why is the sky blue?",
    "translate",
    "summarize -5",
]


IOBOT = [sys.executable, "-c", "import sys; from bots.cli import main; sys.exit(main())"]


def environment(workdir: Path, **extra: str) -> dict:
    """A clean environment: no settings from the machine, the ledger in `workdir`."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("IOBOT_", "IOINTELLIGENCE_", "SLACK_", "DISCORD_"))
    }
    env.update({"IOBOT_PORT": "0", "IOBOT_HOST": "127.0.0.1", "IOBOT_DATABASE_URL": f"sqlite:///{workdir / 'ledger.sqlite3'}"})
    env.update(extra)
    return env


def iobot(workdir: Path, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*IOBOT, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=workdir, env=environment(workdir, **env)
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("iobot")


@pytest.fixture(scope="module")
def console_run(workdir):
    return iobot(workdir, "run", "--emulator", stdin="\n".join(LINES) + "\n", USER="ana", LOGNAME="ana")


def test_console_answers_every_line_and_exits_0(console_run):
    assert console_run.returncode == 0, console_run.stderr
    out = console_run.stdout
    for expected in [
        'you asked "What is the capital of France?"',
        "Summary",
        "Key points",
        "French:",
        "Sentiment: positive",
        "Label: bug",
        "Nothing crossed the threshold",
        "People:",
        "Answer:",
        "Summary Agent",
        "Llama-3.2-90B-Vision-Instruct",
        "Commands",
        'you asked "why is the sky blue?"',
        "Usage: translate <language> <text>",
        "Usage: summarize [max_words] <text>",
    ]:
        assert expected in out, expected
    assert "**" not in out, "piped output is plain text"


def test_run_without_a_key_or_emulator_says_what_to_set(tmp_path):
    result = iobot(tmp_path, "run", stdin="ask hi\n")
    assert result.returncode == 2
    assert "IOINTELLIGENCE_API_KEY" in result.stderr and "--emulator" in result.stderr


def test_malformed_setting_is_named(tmp_path):
    result = iobot(tmp_path, "models", IOBOT_PORT="not-a-port")
    assert result.returncode == 2 and "IOBOT_PORT" in result.stderr


def test_usage_json_shows_what_the_console_run_spent(console_run, workdir):
    result = iobot(workdir, "usage", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    by_model = {row["model"]: row for row in rows}
    chat = by_model["meta-llama/Llama-3.3-70B-Instruct"]
    assert chat["user"] == "console:ana" and chat["requests"] == 9  # 2 questions + 7 agent tasks
    assert chat["total_tokens"] == chat["prompt_tokens"] + chat["completion_tokens"] > chat["estimated_tokens"] > 0
    assert {"day", "user", "model", "prompt_tokens", "completion_tokens", "total_tokens", "requests", "estimated_tokens"} <= set(
        chat
    )
    assert iobot(workdir, "usage", "--json", "--user", "console:nobody").stdout.strip() == "[]"
    assert iobot(workdir, "usage", "--json", "--day", "2000-01-01").stdout.strip() == "[]"
    table = iobot(workdir, "usage").stdout
    assert "console:ana" in table and "50,000" in table


def test_models_prints_the_quota_table_with_todays_use(console_run, workdir):
    result = iobot(workdir, "models")
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if line.startswith("Llama-3.3-70B-Instruct"))
    assert "500,000" in line
    used = json.loads(iobot(workdir, "usage", "--json").stdout)[0]["total_tokens"]
    assert f"{used:,}" in line


def console_service(workdir: Path) -> subprocess.Popen[str]:
    """`iobot run --emulator` chatting on its piped stdin as console:bo, its ledger in `workdir`."""
    return subprocess.Popen(
        [*IOBOT, "run", "--emulator"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=workdir,
        env=environment(workdir, USER="bo", LOGNAME="bo"),
    )


def test_limits_set_by_an_operator_reach_the_running_service(tmp_path):
    service = console_service(tmp_path)
    stdin, stdout = piped(service.stdin), piped(service.stdout)
    try:
        stdin.write("ask first question\n")
        stdin.flush()
        assert "first question" in stdout.readline()
        limit = iobot(tmp_path, "limits", "console:bo", "100")  # beside the running service
        assert limit.returncode == 0 and "100 tokens a day" in limit.stdout
        assert "console:bo: 100" in iobot(tmp_path, "limits").stdout
        assert iobot(tmp_path, "limits", "console:bo").stdout.strip() == "console:bo: 100 tokens a day"
        assert iobot(tmp_path, "limits", "console:bo", "-5").returncode == 2
        stdin.write("ask second question\n")  # at once: the next reservation sees the new budget
        stdin.flush()
        stdin.close()
        rest = stdout.read()
        assert "Your daily budget of 100 tokens is too small for any answer" in rest
        assert service.wait(timeout=30) == 0
    finally:
        service.kill()
    assert iobot(tmp_path, "limits", "console:bo", "--clear").stdout.strip() == "console:bo: 50,000 tokens a day"


def test_a_second_run_on_the_same_ledger_by_another_name_is_refused_naming_the_first(tmp_path):
    service = console_service(tmp_path)
    stdin, stdout = piped(service.stdin), piped(service.stdout)
    try:
        stdin.write("ask are you there?\n")
        stdin.flush()
        assert "are you there" in stdout.readline()
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "iobot.sqlite3").symlink_to(tmp_path / "ledger.sqlite3")
        second = iobot(
            tmp_path,
            "run",
            "--emulator",
            stdin="ask hi\n",
            IOBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'elsewhere' / 'iobot.sqlite3'}",
        )
        assert second.returncode == 2
        assert f"{tmp_path / 'ledger.sqlite3'} is in use by iobot process {service.pid} on " in second.stderr
        assert "Stop that process" in second.stderr and "owner=" not in second.stderr
        assert (
            iobot(tmp_path, "usage", IOBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'elsewhere' / 'iobot.sqlite3'}").returncode == 0
        )
        stdin.close()
        assert service.wait(timeout=30) == 0
    finally:
        service.kill()


def test_usage_shows_calls_cut_off_by_a_crash_apart_from_the_person(tmp_path):
    async def leave_a_call_open() -> None:
        ledger = await SQLiteLedger.open(str(tmp_path / "ledger.sqlite3"), user_daily_tokens=50_000)
        await ledger.reserve(user="console:cy", model="Qwen/QwQ-32B", tokens=1_280, model_limit=None)
        await ledger.close()  # as if the process died mid-call: the next owner finds it open

    asyncio.run(leave_a_call_open())
    asyncio.run(leave_a_call_open())  # this owner charges the first call as interrupted
    [row] = json.loads(iobot(tmp_path, "usage", "--json").stdout)
    assert (row["total_tokens"], row["requests"], row["interrupted_tokens"], row["interrupted_requests"]) == (0, 0, 1_280, 1)
    table = iobot(tmp_path, "usage").stdout
    assert "interrupted" in table and "1,280" in table and "not the person's budget" in table


def test_agents_from_the_emulator(tmp_path):
    result = iobot(tmp_path, "agents", "--emulator")
    assert result.returncode == 0 and "summary_agent" in result.stdout


def test_an_operator_quota_file_replaces_the_table(tmp_path):
    quota_file = tmp_path / "quotas.toml"
    quota_file.write_text('[[model]]\nname = "acme/model-x"\napi_daily_tokens = 1_234\ncontext_length = 4_096\n')
    result = iobot(tmp_path, "models", IOBOT_QUOTA_FILE=str(quota_file))
    assert result.returncode == 0 and "model-x" in result.stdout and "1,234" in result.stdout
    assert "Llama-3.3-70B-Instruct" not in result.stdout
    quota_file.write_text('[[model]]\nname = "acme/model-x"\napi_daily_tokens = "lots"\n')
    result = iobot(tmp_path, "models", IOBOT_QUOTA_FILE=str(quota_file))
    assert result.returncode == 2 and "api_daily_tokens" in result.stderr and str(quota_file) in result.stderr


@pytest.mark.parametrize(
    "args", [["usage"], ["usage", "--json"], ["limits"], ["limits", "console:ana"], ["limits", "console:ana", "5"]]
)
def test_admin_commands_without_a_ledger_name_its_path_and_create_none(tmp_path, args):
    result = iobot(tmp_path, *args)
    assert result.returncode == 2
    assert f"there is no ledger at {tmp_path / 'ledger.sqlite3'}" in result.stderr and "IOBOT_DATABASE_URL" in result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_models_without_a_ledger_shows_the_quota_table_with_no_use_and_creates_none(tmp_path):
    result = iobot(tmp_path, "models")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("Llama-3.3-70B-Instruct"))
    assert line.split()[1:4] == ["500,000", "0", "500,000"]  # quota, used today, left
    assert list(tmp_path.iterdir()) == []


MALFORMED_PERSON_IDS = [
    ["limits", "set", "bob", "5"],
    ["limits", "bob", "5"],
    ["limits", "bob", "--clear"],
    ["limits", "slack:U456"],
    ["usage", "--user", "bob"],
    ["usage", "--json", "--user", "discord:ana"],
    ["usage", "--user", "console:"],
]


def test_person_ids_are_validated_a_malformed_one_explained_with_exit_2(tmp_path):
    asyncio.run(make_ledger(tmp_path))
    for args in MALFORMED_PERSON_IDS:
        result = iobot(tmp_path, *args)
        assert result.returncode == 2, args
        assert "is not a person id" in result.stderr and "slack:<team>:<user>" in result.stderr, args
        assert "discord:<user id>" in result.stderr and "console:<login>" in result.stderr, args
    assert iobot(tmp_path, "limits").stdout.splitlines()[1:] == []  # no budget was set
    for person in ("slack:T123:U456", "discord:123456789", "console:ana.b"):
        result = iobot(tmp_path, "limits", person, "700")
        assert (result.returncode, result.stdout.strip()) == (0, f"{person}: 700 tokens a day"), result.stderr
        assert iobot(tmp_path, "usage", "--json", "--user", person).stdout.strip() == "[]"


def test_usage_counts_utc_days_and_says_so_whatever_the_local_time_zone(tmp_path):
    asyncio.run(make_ledger(tmp_path))
    # A zone whose date differs from UTC's now (POSIX signs are inverted: WEST+12 is 12 hours behind UTC).
    zone = "WEST+12" if datetime.now(UTC).hour < 12 else "EAST-14"
    before = datetime.now(UTC).date()
    empty = iobot(tmp_path, "usage", TZ=zone)
    after = datetime.now(UTC).date()
    assert empty.stdout.strip() in {f"No usage recorded on {day.isoformat()} (UTC)." for day in (before, after)}

    asyncio.run(make_ledger(tmp_path, spend_as="console:cy"))
    table = iobot(tmp_path, "usage", TZ=zone).stdout.splitlines()
    assert table[0].startswith("day (UTC)") and table[1].startswith((before.isoformat(), after.isoformat()))


async def make_ledger(workdir: Path, spend_as: str | None = None) -> None:
    """The ledger `iobot run` would leave in `workdir`; with one settled call today (UTC) by `spend_as`."""
    ledger = await SQLiteLedger.open(str(workdir / "ledger.sqlite3"), user_daily_tokens=50_000)
    if spend_as is not None:
        reservation = await ledger.reserve(user=spend_as, model="Qwen/QwQ-32B", tokens=300, model_limit=None)
        await ledger.settle(reservation, prompt_tokens=120, completion_tokens=80, estimated=False)
    await ledger.close()
