"""Fault injection against a real `iobot run` process and an emulator in another process.

Each fault must end in a clear message to the person, a released reservation, and the process still
answering the next request. SIGTERM must let work in flight finish (or release it) and exit 0.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import piped
from .processes import IOBOT, Emulator, clean_environment, discord_environment, logged_port, slack_environment


class Bot:
    """`iobot run` on the console, its stdin and stdout piped."""

    def __init__(self, workdir: Path, emulator: Emulator, **env: str | None) -> None:
        """`env` adds to the clean environment; a variable given as None is left out of it."""
        environment = clean_environment(
            workdir,
            IOINTELLIGENCE_API_KEY="io-v2-process-test-key",
            IOINTELLIGENCE_BASE_URL=emulator.base_url,
            IOBOT_MAX_RETRIES="1",
            IOBOT_API_TIMEOUT="2",
            IOBOT_FALLBACK_MODELS="",
            USER="tester",
            LOGNAME="tester",
        )
        environment.update({name: value for name, value in env.items() if value is not None})
        for name in [name for name, value in env.items() if value is None]:
            environment.pop(name, None)
        self.stderr_path = workdir / "stderr.log"
        self.process = subprocess.Popen(
            [*IOBOT, "run"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("w"),
            text=True,
            cwd=workdir,
            env=environment,
        )
        self.stdin, self.stdout = piped(self.process.stdin), piped(self.process.stdout)
        self.database = workdir / "ledger.sqlite3"

    def ask(self, line: str) -> str:
        """Send a line; return the reply (lines up to the blank line that ends it)."""
        self.stdin.write(line + "\n")
        self.stdin.flush()
        lines = []
        while (text := self.stdout.readline()) not in ("\n", ""):
            lines.append(text)
        return "".join(lines)

    def send_until_in_flight(self, line: str, emulator: Emulator) -> None:
        """Send a line and return once its API call has reached the emulator."""
        self.stdin.write(line + "\n")
        self.stdin.flush()
        deadline = time.monotonic() + 10
        while emulator.chat_requests() == 0:
            assert time.monotonic() < deadline, "the request never reached the API"
            time.sleep(0.05)

    def port(self) -> int:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            port = logged_port(self.stderr_path.read_text())
            if port is not None:
                return port
            time.sleep(0.05)
        raise AssertionError("the HTTP server never said where it listens")

    def finish(self, timeout: float = 30) -> int:
        self.stdin.close()
        return self.process.wait(timeout=timeout)

    def ledger(self) -> tuple[list[tuple], int]:
        """The settled usage rows and the number of reservations still open."""
        with sqlite3.connect(self.database) as db:
            usage = db.execute("SELECT user, model, requests FROM usage").fetchall()
            open_reservations = db.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]
        return usage, open_reservations


@pytest.fixture
def emulator():
    emu = Emulator()
    yield emu
    emu.stop()


@pytest.fixture
def bot(tmp_path, emulator):
    process = Bot(tmp_path, emulator)
    yield process
    if process.process.poll() is None:
        process.process.kill()


FAULTS = [
    ({"kind": "status", "status": 429, "times": 5}, "busy or this model's quota is spent"),
    ({"kind": "status", "status": 429, "retry_after": "3600"}, "busy or this model's quota is spent"),
    ({"kind": "status", "status": 500, "times": 5}, "having trouble"),
    ({"kind": "status", "status": 503, "times": 5}, "having trouble"),
    ({"kind": "html", "status": 502, "times": 5}, "having trouble"),
    ({"kind": "slow", "delay": 4.0}, "took too long"),
    ({"kind": "cut_stream", "times": 5}, "cannot be reached"),
    ({"kind": "drop", "times": 5}, "cannot be reached"),
    ({"kind": "status", "status": 401}, "API key was refused"),
]


def test_every_fault_is_a_clear_message_and_the_next_request_is_served(bot, emulator):
    for fault, message in FAULTS:
        emulator.inject(path="/chat/completions", **fault)
        reply = bot.ask(f"ask during a {fault['kind']} {fault.get('status', '')}")
        assert message in reply, (fault, reply)
        emulator.clear()
        assert 'you asked "next question"' in bot.ask("ask next question"), fault
    assert bot.finish() == 0
    usage, open_reservations = bot.ledger()
    assert open_reservations == 0, "every failed call released its reservation"
    assert usage == [("console:tester", "meta-llama/Llama-3.3-70B-Instruct", len(FAULTS))], "only answers were charged"
    assert "io-v2-process-test-key" not in bot.stderr_path.read_text()


def test_healthz_and_metrics(bot, emulator):
    port = bot.port()
    base = f"http://127.0.0.1:{port}"
    health = httpx.get(f"{base}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {
        "status": "ok",
        "ledger": "ok",
        "database": {"kind": "sqlite", "ok": True},
        "last_api_error": None,
    }
    bot.ask("ask hello")
    emulator.inject(kind="status", status=503, times=5)
    bot.ask("ask fails")
    health = httpx.get(f"{base}/healthz", timeout=5).json()
    assert health["status"] == "ok" and "ServerError" in health["last_api_error"]["error"]
    text = httpx.get(f"{base}/metrics", timeout=5).text
    assert 'iobot_requests_total{command="ask",outcome="ok",platform="console"} 1.0' in text
    assert 'iobot_requests_total{command="ask",outcome="error",platform="console"} 1.0' in text
    assert 'iobot_api_retries_total{endpoint="chat/completions"} 1.0' in text
    assert "iobot_api_latency_seconds_bucket" in text and "iobot_reservations_in_flight 0.0" in text
    used = re.search(r'iobot_tokens_total\{kind="prompt",model="meta-llama/Llama-3.3-70B-Instruct"\} (\d+)', text)
    remaining = re.search(r'iobot_quota_remaining_tokens\{model="meta-llama/Llama-3.3-70B-Instruct"\} ([\d.e+]+)', text)
    assert used and remaining and float(remaining.group(1)) < 500_000
    assert bot.finish() == 0


def test_the_terminal_chat_serves_http_on_loopback_unless_iobot_host_is_set(tmp_path, emulator):
    bot = Bot(tmp_path, emulator, IOBOT_HOST=None)
    try:
        port = bot.port()  # the log must say 127.0.0.1: nothing on the terminal is for other machines
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert bot.finish() == 0
    finally:
        if bot.process.poll() is None:
            bot.process.kill()


def test_sigterm_lets_the_answer_in_flight_finish_and_exits_0(tmp_path):
    emulator = Emulator(delay=1.5)
    try:
        bot = Bot(tmp_path, emulator, IOBOT_SHUTDOWN_GRACE="10")
        bot.send_until_in_flight("ask a slow question", emulator)
        started = time.monotonic()
        bot.process.send_signal(signal.SIGTERM)
        assert bot.process.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
        assert 'you asked "a slow question"' in bot.stdout.read()
        usage, open_reservations = bot.ledger()
        assert [row[2] for row in usage] == [1] and open_reservations == 0
    finally:
        emulator.stop()


def test_sigterm_past_the_grace_period_releases_and_exits_0(tmp_path):
    emulator = Emulator(delay=30)
    try:
        bot = Bot(tmp_path, emulator, IOBOT_SHUTDOWN_GRACE="0.5", IOBOT_API_TIMEOUT="60")
        bot.send_until_in_flight("ask a question that will not finish", emulator)
        started = time.monotonic()
        bot.process.send_signal(signal.SIGTERM)
        assert bot.process.wait(timeout=15) == 0
        assert time.monotonic() - started < 5
        usage, open_reservations = bot.ledger()
        assert usage == [] and open_reservations == 0, "the cancelled call was released, not charged"
        assert "cancelled 1 request" in bot.stderr_path.read_text()
    finally:
        emulator.stop()


def test_json_logs_carry_one_line_per_request(tmp_path, emulator):
    bot = Bot(tmp_path, emulator, IOBOT_LOG_FORMAT="json")
    bot.ask("ask my private question")
    assert bot.finish() == 0
    entries = [json.loads(line) for line in bot.stderr_path.read_text().splitlines() if line.startswith("{")]
    requests = [entry for entry in entries if entry["logger"] == "iobot.service"]
    assert len(requests) == 1
    assert requests[0]["command"] == "ask" and requests[0]["outcome"] == "ok" and requests[0]["tokens"] > 0
    assert "private question" not in bot.stderr_path.read_text()


async def test_iobot_run_starts_discord_from_its_settings_and_stops_cleanly(tmp_path):
    """The wiring: DISCORD_* settings alone make `iobot run` answer on Discord, and SIGTERM ends it with 0."""
    import asyncio

    from tests.standins.discord import TOKEN, DiscordStandIn

    async with DiscordStandIn() as standin:
        env = discord_environment(tmp_path, standin)
        bot = await asyncio.create_subprocess_exec(
            *IOBOT, "run", "--emulator", stdin=subprocess.DEVNULL, stderr=(tmp_path / "stderr.log").open("w"), env=env
        )
        try:
            await standin.wait_for(lambda: standin.identifies, timeout=20)
            question = await standin.post("<@1000> What is io.net?", mention_bot=True)
            answer = await standin.wait_for(
                lambda: [m for m in standin.replies_to(question) if "-# " in m["content"]], timeout=20
            )
            assert 'you asked "What is io.net?"' in answer[0]["content"]
            bot.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(bot.wait(), timeout=20) == 0
        finally:
            if bot.returncode is None:
                bot.kill()
    assert TOKEN not in (tmp_path / "stderr.log").read_text()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        assert db.execute("SELECT user, requests FROM usage").fetchall() == [(f"discord:{question['author']['id']}", 1)]


def test_a_refused_discord_token_is_explained_and_exits_2(tmp_path):
    """A credential refused at start is a setting to fix, on every platform alike: exit 2, as for Slack."""
    import asyncio

    from tests.standins.discord import DiscordStandIn

    async def main() -> tuple[int | None, str]:
        async with DiscordStandIn() as standin:
            env = discord_environment(tmp_path, standin)
            env["DISCORD_BOT_TOKEN"] = "not-the-right-token"
            bot = await asyncio.create_subprocess_exec(
                *IOBOT, "run", "--emulator", stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
            )
            _, stderr = await asyncio.wait_for(bot.communicate(), timeout=20)
            return bot.returncode, stderr.decode()

    code, log = asyncio.run(main())
    assert code == 2 and "Discord refused DISCORD_BOT_TOKEN" in log and "not-the-right-token" not in log


@pytest.mark.parametrize(("delay", "grace", "settled"), [(1.5, "15", 50), (30, "0.5", 0)])
def test_sigterm_with_50_requests_in_flight(tmp_path, delay, grace, settled):
    """Within the grace period all 50 finish and are charged; past it, all are cancelled and released."""
    import asyncio

    from tests.standins.discord import DiscordStandIn

    emulator = Emulator(delay=delay)

    async def main() -> tuple[int, float, int]:
        async with DiscordStandIn() as standin:
            env = discord_environment(
                tmp_path,
                standin,
                IOINTELLIGENCE_API_KEY="key",
                IOINTELLIGENCE_BASE_URL=emulator.base_url,
                IOBOT_API_TIMEOUT="60",
                IOBOT_SHUTDOWN_GRACE=grace,
                IOBOT_USER_REQUESTS_PER_MINUTE="1000",
                IOBOT_USER_DAILY_TOKENS="10000000",
            )
            bot = await asyncio.create_subprocess_exec(
                *IOBOT, "run", stdin=subprocess.DEVNULL, stderr=(tmp_path / "stderr.log").open("w"), env=env
            )
            try:
                await standin.wait_for(lambda: standin.identifies, timeout=20)
                for i in range(50):
                    await standin.post(f"<@1000> question {i}", mention_bot=True)
                await standin.wait_for(lambda: emulator.chat_requests() >= 50 or None, timeout=30)
                started = time.monotonic()
                bot.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(bot.wait(), timeout=30)
                answers = sum(1 for m in standin.bot_messages() if "-# " in m["content"])
                return code, time.monotonic() - started, answers
            finally:
                if bot.returncode is None:
                    bot.kill()

    try:
        code, seconds, answers = asyncio.run(main())
    finally:
        emulator.stop()
    assert code == 0 and seconds < float(grace) + 6
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        charged = db.execute("SELECT COALESCE(SUM(requests), 0) FROM usage").fetchone()[0]
        open_reservations = db.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]
    assert open_reservations == 0, "every request was settled or released"
    assert charged == settled and answers == settled
    if not settled:
        assert "cancelled 50 request(s)" in (tmp_path / "stderr.log").read_text()


async def test_iobot_run_serves_slack_over_http_from_its_settings(tmp_path):
    """The wiring: SLACK_* settings make `iobot run` take signed slash commands at /slack/events."""
    import asyncio

    from tests.standins.slack import SlackStandIn, command_body, signed_headers

    async with SlackStandIn(bot_token="xoxb-process-test") as standin:
        stderr = tmp_path / "stderr.log"
        bot = await asyncio.create_subprocess_exec(
            *IOBOT,
            "run",
            "--emulator",
            stdin=subprocess.DEVNULL,
            stderr=stderr.open("w"),
            env=slack_environment(tmp_path, standin),
        )
        try:
            port = await standin.wait_for(lambda: logged_port(stderr.read_text()), timeout=20)
            body = command_body("ask What is io.net?", user="U0ANA", response_url=standin.response_url("r1"), trigger_id="t1")
            async with httpx.AsyncClient() as http:
                ack = await http.post(
                    f"http://127.0.0.1:{port}/slack/events",
                    content=body,
                    headers=signed_headers(body, "process-signing-secret", "application/x-www-form-urlencoded"),
                )
                forged = await http.post(
                    f"http://127.0.0.1:{port}/slack/events",
                    content=body,
                    headers=signed_headers(body, "wrong-secret", "application/x-www-form-urlencoded"),
                )
            assert ack.status_code == 200 and forged.status_code == 401
            [answer] = await standin.wait_for(lambda: standin.responses("r1"), timeout=20)
            assert "What is io.net?" in json.dumps(answer)
            bot.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(bot.wait(), timeout=20) == 0
        finally:
            if bot.returncode is None:
                bot.kill()
    assert "xoxb-process-test" not in stderr.read_text() and "process-signing-secret" not in stderr.read_text()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        assert db.execute("SELECT user, requests FROM usage").fetchall() == [("slack:T0TEST:U0ANA", 1)]


async def test_a_refused_slack_token_is_a_clear_error(tmp_path):
    import asyncio

    from tests.standins.slack import SlackStandIn

    async with SlackStandIn(bot_token="xoxb-the-real-one") as standin:
        env = slack_environment(tmp_path, standin, SLACK_BOT_TOKEN="xoxb-a-wrong-one")
        bot = await asyncio.create_subprocess_exec(
            *IOBOT, "run", "--emulator", stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        _, stderr = await asyncio.wait_for(bot.communicate(), timeout=20)
    assert bot.returncode == 2
    assert "Slack refused SLACK_BOT_TOKEN (invalid_auth)" in stderr.decode() and "xoxb-a-wrong-one" not in stderr.decode()


def test_a_stream_cut_off_on_discord_is_told_released_and_the_next_answered(tmp_path):
    """Discord answers stream: a cut stream through a real iobot run ends in a message, not a hang or a charge."""
    import asyncio

    from tests.standins.discord import DiscordStandIn

    emulator = Emulator()

    async def main() -> tuple[list[str], int]:
        async with DiscordStandIn() as standin:
            env = discord_environment(
                tmp_path,
                standin,
                IOINTELLIGENCE_API_KEY="key",
                IOINTELLIGENCE_BASE_URL=emulator.base_url,
                IOBOT_FALLBACK_MODELS="",
            )
            bot = await asyncio.create_subprocess_exec(
                *IOBOT, "run", stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
            )
            try:
                await standin.wait_for(lambda: standin.identifies, timeout=20)
                emulator.inject(kind="cut_stream", path="/chat/completions")
                cut = await standin.post("<@1000> this answer will break", mention_bot=True)
                broken = await standin.wait_for(
                    lambda: [m["content"] for m in standin.replies_to(cut) if "cut off" in m["content"]] or None, timeout=20
                )
                fine = await standin.post("<@1000> and this one?", mention_bot=True)
                answered = await standin.wait_for(
                    lambda: [m["content"] for m in standin.replies_to(fine) if "-# " in m["content"]] or None, timeout=20
                )
                bot.send_signal(signal.SIGTERM)
                return broken + answered, await asyncio.wait_for(bot.wait(), timeout=20)
            finally:
                if bot.returncode is None:
                    bot.kill()

    try:
        replies, code = asyncio.run(main())
    finally:
        emulator.stop()
    assert "cut off by the AI service" in replies[0] and 'you asked "and this one?"' in replies[-1]
    assert code == 0
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        assert db.execute("SELECT COALESCE(SUM(requests), 0) FROM usage").fetchone()[0] == 1, "only the answer is charged"
        assert db.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0


async def test_slack_and_discord_in_one_process_leak_no_secret_even_at_debug(tmp_path):
    """Both platforms at once, DEBUG logging (libraries included): no token, secret or key in the log."""
    import asyncio

    from tests.standins.discord import TOKEN, DiscordStandIn
    from tests.standins.slack import SlackStandIn, command_body, signed_headers

    async with DiscordStandIn() as discord_standin, SlackStandIn(bot_token="xoxb-debug-secret") as slack_standin:
        env = {
            **discord_environment(tmp_path, discord_standin),
            **slack_environment(tmp_path, slack_standin, SLACK_SIGNING_SECRET="debug-signing-secret", IOBOT_LOG_LEVEL="DEBUG"),
        }
        stderr = tmp_path / "stderr.log"
        bot = await asyncio.create_subprocess_exec(
            *IOBOT, "run", "--emulator", stdin=subprocess.DEVNULL, stderr=stderr.open("w"), env=env
        )
        try:
            await discord_standin.wait_for(lambda: discord_standin.identifies, timeout=20)
            question = await discord_standin.post("<@1000> hi", mention_bot=True)
            await discord_standin.wait_for(
                lambda: [m for m in discord_standin.replies_to(question) if "-# " in m["content"]] or None, timeout=20
            )
            port = await slack_standin.wait_for(lambda: logged_port(stderr.read_text()))
            body = command_body("ask hello", user="U0ANA", response_url=slack_standin.response_url("r1"), trigger_id="t1")
            async with httpx.AsyncClient() as http:
                await http.post(
                    f"http://127.0.0.1:{port}/slack/events",
                    content=body,
                    headers=signed_headers(body, "debug-signing-secret", "application/x-www-form-urlencoded"),
                )
            await slack_standin.wait_for(lambda: slack_standin.responses("r1"), timeout=20)
            bot.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(bot.wait(), timeout=20) == 0
        finally:
            if bot.returncode is None:
                bot.kill()
    log = stderr.read_text()
    assert "DEBUG" in log
    for secret in (TOKEN, "xoxb-debug-secret", "debug-signing-secret", "emulator-key"):
        assert secret not in log, secret
