"""`iobot` as a person runs it: a real subprocess, lines piped in, replies on stdout."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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


def iobot(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("IOBOT_", "IOINTELLIGENCE_", "SLACK_", "DISCORD_"))}
    environment.update({"IOBOT_PORT": "0", "IOBOT_HOST": "127.0.0.1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-c", "import sys; from bots.cli import main; sys.exit(main())", *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=environment,
    )


@pytest.fixture(scope="module")
def console_run(tmp_path_factory):
    return iobot("run", "--emulator", stdin="\n".join(LINES) + "\n", env={"PWD": str(tmp_path_factory.mktemp("run"))})


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


def test_run_without_a_key_or_emulator_says_what_to_set():
    result = iobot("run", stdin="ask hi\n")
    assert result.returncode == 2
    assert "IOINTELLIGENCE_API_KEY" in result.stderr and "--emulator" in result.stderr


def test_malformed_setting_is_named():
    result = iobot("models", env={"IOBOT_PORT": "not-a-port"})
    assert result.returncode == 2 and "IOBOT_PORT" in result.stderr


def test_models_prints_the_quota_table():
    result = iobot("models")
    assert result.returncode == 0
    assert "Llama-3.3-70B-Instruct" in result.stdout and "500,000" in result.stdout


def test_agents_from_the_emulator():
    result = iobot("agents", "--emulator")
    assert result.returncode == 0 and "summary_agent" in result.stdout
