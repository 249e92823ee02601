"""Helpers for tests that run `iobot run` and the emulator as processes of their own."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.standins.slack import SlackStandIn

from .conftest import piped

IOBOT = [sys.executable, "-c", "import sys; from bots.cli import main; sys.exit(main())"]


def clean_environment(workdir: Path, **extra: str) -> dict:
    """No settings from the machine; the ledger in `workdir`; the HTTP server on a free loopback port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOBOT_", "IOINTELLIGENCE_", "SLACK_", "DISCORD_"))}
    env.update(IOBOT_DATABASE_URL=f"sqlite:///{workdir / 'ledger.sqlite3'}", IOBOT_HOST="127.0.0.1", IOBOT_PORT="0")
    env.update(extra)
    return env


def discord_environment(workdir: Path, standin, **extra: str) -> dict:
    from tests.standins.discord import TOKEN

    return clean_environment(
        workdir, DISCORD_BOT_TOKEN=TOKEN, DISCORD_API_URL=standin.api_url, DISCORD_GATEWAY_URL=standin.gateway_url, **extra
    )


def logged_port(log: str) -> int | None:
    """The HTTP server's port, once the service's log says where it listens."""
    found = re.search(r"HTTP server on 127\.0\.0\.1:(\d+)", log)
    return int(found.group(1)) if found else None


class Emulator:
    """`iobot emulator` in its own process, driven through its control endpoints."""

    def __init__(self, delay: float = 0.0) -> None:
        self.process = subprocess.Popen(
            [*IOBOT, "emulator", "--port", "0", "--delay", str(delay)], stdout=subprocess.PIPE, text=True
        )
        found = re.search(r"http://\S+", piped(self.process.stdout).readline())
        assert found is not None, "the emulator did not say where it listens"
        self.base_url = found.group(0)
        self.control = self.base_url.removesuffix("/api/v1") + "/_emulator"

    def inject(self, **fault: object) -> None:
        httpx.post(f"{self.control}/faults", json=fault, timeout=5).raise_for_status()

    def clear(self) -> None:
        httpx.delete(f"{self.control}/faults", timeout=5).raise_for_status()

    def chat_requests(self) -> int:
        requests = httpx.get(f"{self.control}/requests", timeout=5).json()
        return sum(1 for r in requests if r["path"] == "/chat/completions")

    def reported_usage(self) -> dict[str, dict[str, int]]:
        """Per model: answers that reported usage, and their prompt and completion tokens."""
        return httpx.get(f"{self.control}/usage", timeout=5).json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


SECRET = "process-signing-secret"  # what slack_environment configures


def slack_environment(tmp_path: Path, standin: SlackStandIn, **extra: str) -> dict:
    settings = dict(SLACK_BOT_TOKEN=standin.bot_token, SLACK_SIGNING_SECRET=SECRET, SLACK_API_URL=standin.api_url)
    return clean_environment(tmp_path, **{**settings, **extra})


class SlackReplica:
    """One `iobot run` serving Slack's HTTP requests (to `url`), its log in `workdir`."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self, standin: SlackStandIn, **env: str) -> SlackReplica:
        environment = slack_environment(self.log.parent, standin, **env)
        self.process = await asyncio.create_subprocess_exec(
            *IOBOT, "run", stdin=subprocess.DEVNULL, stderr=self.log.open("w"), env=environment
        )
        port = await standin.wait_for(lambda: logged_port(self.log.read_text()), timeout=30)
        self.url = f"http://127.0.0.1:{port}/slack/events"
        return self

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
