"""`iobot` as a person runs it: a real subprocess, lines piped in, replies on stdout."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from core.ledger import SQLiteLedger
from emulator.process import start_emulator_process

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


def test_models_json_matches_the_ledger(console_run, workdir):
    result = iobot(workdir, "models", "--json")
    assert result.returncode == 0, result.stderr
    models = {row["model"]: row for row in json.loads(result.stdout)}
    [spent] = json.loads(iobot(workdir, "usage", "--json").stdout)
    chat = models[spent["model"]]
    assert chat["used_tokens"] == spent["total_tokens"] > 0
    assert chat["left_tokens"] == chat["api_daily_tokens"] - spent["total_tokens"]
    assert chat["day"] == spent["day"] == datetime.now(UTC).date().isoformat()
    assert {"context_length", "images"} <= set(chat) and models["meta-llama/Llama-3.2-90B-Vision-Instruct"]["images"] is True
    assert all(row["used_tokens"] == 0 for name, row in models.items() if name != spent["model"])


def test_limits_json_matches_the_ledger(tmp_path):
    asyncio.run(make_ledger(tmp_path))
    assert json.loads(iobot(tmp_path, "limits", "--json").stdout) == {"default_daily_tokens": 50_000, "overrides": []}
    assert json.loads(iobot(tmp_path, "limits", "console:ana", "700", "--json").stdout) == {
        "user": "console:ana",
        "daily_tokens": 700,
    }
    iobot(tmp_path, "limits", "discord:42", "9000")
    listed = json.loads(iobot(tmp_path, "limits", "--json", IOBOT_USER_DAILY_TOKENS="1234").stdout)

    async def ledger_limits() -> dict[str, int]:
        ledger = await SQLiteLedger.open(str(tmp_path / "ledger.sqlite3"), user_daily_tokens=1234, owner=False)
        try:
            return await ledger.user_limits()
        finally:
            await ledger.close()

    assert listed["default_daily_tokens"] == 1234
    assert {row["user"]: row["daily_tokens"] for row in listed["overrides"]} == asyncio.run(ledger_limits())
    assert {row["user"] for row in listed["overrides"]} == {"console:ana", "discord:42"}
    cleared = json.loads(iobot(tmp_path, "limits", "console:ana", "--clear", "--json").stdout)
    assert cleared == {"user": "console:ana", "daily_tokens": 50_000}


def test_check_json_lists_each_finding_and_keeps_the_exit_code(tmp_path):
    result = iobot(tmp_path, "check", "--json", "--emulator", IOBOT_MODLE="x")
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout)
    assert all(set(finding) == {"level", "message"} and finding["level"] == "warning" for finding in findings)
    assert any("IOBOT_MODLE" in finding["message"] and "did you mean IOBOT_MODEL" in finding["message"] for finding in findings)
    failed = iobot(tmp_path, "check", "--json", "--emulator", IOBOT_MODEL="acme/no-such-model")
    assert failed.returncode == 1
    assert any(f["level"] == "error" and "acme/no-such-model" in f["message"] for f in json.loads(failed.stdout))


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


class Pty:
    """`iobot` on a pseudo-terminal of 30 rows by 100 columns, as a person at a keyboard runs it.

    Its stdin and stdout are the terminal (its controlling one, so a Ctrl-C the terminal turns into
    SIGINT would reach it); stderr is a file, to see what is logged.
    """

    def __init__(self, workdir: Path, *args: str, **env: str) -> None:
        self.main, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.stderr = workdir / f"stderr-{args[0]}.txt"
        screen_env = {"TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1", "XDG_STATE_HOME": str(workdir / "state")}
        with self.stderr.open("w") as stderr:
            self.process = subprocess.Popen(
                [*IOBOT, *args],
                stdin=terminal,
                stdout=terminal,
                stderr=stderr,
                cwd=workdir,
                env=environment(workdir, **screen_env, **env),
                start_new_session=True,
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # its own controlling terminal
            )
        os.close(terminal)
        self._screen = b""
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.main, 4096)
            except OSError:  # the process closed the terminal
                return
            if not data:
                return
            with self._lock:
                self._screen += data

    def screen(self) -> str:
        with self._lock:
            return self._screen.decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.main, keys.encode())

    def expect(self, text: str, *, times: int = 1, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while self.screen().count(text) < times:
            assert time.monotonic() < deadline, f"{text!r} did not show; the screen:\n{self.screen()}"
            time.sleep(0.02)
        return self.screen()

    def wait(self) -> int:
        """The exit code, once the output has been read to its end."""
        code = self.process.wait(timeout=30)
        time.sleep(0.2)
        os.close(self.main)
        return code

    def __enter__(self) -> Pty:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def emulator_process():
    """`iobot emulator` in a process of its own: a test drives its faults over HTTP."""
    process, base_url = start_emulator_process()
    yield base_url
    process.terminate()
    process.wait(timeout=10)


def test_the_terminal_chat_on_a_pseudo_terminal(tmp_path, emulator_process):
    api = {"IOINTELLIGENCE_BASE_URL": emulator_process, "IOINTELLIGENCE_API_KEY": "io-v2-pty-test"}
    with Pty(tmp_path, "run", USER="di", LOGNAME="di", **api) as terminal:
        terminal.expect("Ctrl-D quits")
        slow = {"kind": "slow", "delay": 60, "path": "/chat/completions"}
        httpx.post(emulator_process.removesuffix("/api/v1") + "/_emulator/faults", json=slow).raise_for_status()
        terminal.type("ask a question the API is slow to answer\r")
        terminal.expect("thinking")
        time.sleep(1)  # the call is in flight
        terminal.type("\x03")  # Ctrl-C: a key in the chat, not the signal that would stop iobot
        terminal.expect("Cancelled: nothing was charged")

        terminal.type("ask where is the river?\r")
        terminal.expect("Llama-3.3-70B-Instruct · ")
        terminal.type("half a thought\x03")  # Ctrl-C at the prompt clears the line, and the chat goes on
        time.sleep(1)  # a new prompt reads the history in the background: a person's Up comes later than a script's
        terminal.type("\x1b[A\r")  # Up: the message before, again
        terminal.expect("Llama-3.3-70B-Instruct · ", times=2)
        terminal.type("\x04")  # Ctrl-D
        assert terminal.wait() == 0, terminal.screen()
    [row] = json.loads(iobot(tmp_path, "usage", "--json").stdout)
    assert (row["user"], row["requests"]) == ("console:di", 2), "the cancelled question cost nothing"
    assert "outcome=" not in terminal.stderr.read_text(), "no request log lines while the chat is on screen"
    history = (tmp_path / "state" / "iobot" / "console-history").read_text()
    assert "ask where is the river?" in history and "half a thought" not in history


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_terminal_chat_waits_for_a_message_stops_it_at_once_exit_0(tmp_path, signum):
    with Pty(tmp_path, "run", "--emulator") as terminal:
        terminal.expect("Ctrl-D quits")
        terminal.type("half typed")
        terminal.expect("half typed")
        terminal.process.send_signal(signum)  # `kill`, or a service manager stopping it
        assert terminal.wait() == 0
    logged = terminal.stderr.read_text()
    assert "Traceback" not in logged and " ERROR " not in logged


def test_admin_tables_are_drawn_on_a_terminal_and_say_their_days_are_utc(tmp_path):
    asyncio.run(make_ledger(tmp_path, spend_as="console:cy"))
    with Pty(tmp_path, "usage") as terminal:
        assert terminal.wait() == 0
        usage = terminal.screen()
    assert "Usage on" in usage and "(UTC days)" in usage and "─" in usage and "console:cy" in usage
    with Pty(tmp_path, "models") as terminal:
        assert terminal.wait() == 0
        models = terminal.screen()
    assert "quotas reset at 00:00 UTC" in models and "─" in models
    assert re.search(r"QwQ-32B +500,000 +200 +499,800", models), "numbers right-aligned under their headers"
