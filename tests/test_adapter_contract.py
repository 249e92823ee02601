"""The adapter contract (core/adapter.py), the same tests for every adapter, each through its real library:
Slack over HTTP (Bolt, signed requests, the Slack stand-in), Discord (discord.py, the Discord stand-in)
and the console (on pipes).

Each platform comes as a `Driver`: the adapter built as the composition root builds it (from its
settings and the service), its routes mounted on the process's HTTP server, and a way to say
something as a person and read the bot's answer.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from adapters import discord, slack
from adapters.console import ConsoleAdapter
from adapters.discord import DiscordSettings
from adapters.slack import SlackSettings
from bots.app import build_adapters
from bots.http import HealthState, make_http_app, start_http_server
from core.adapter import Adapter, AdapterError
from core.client import IOClient
from core.ledger import SQLiteLedger
from core.quotas import load_quota_table
from core.service import Service, ServiceConfig
from core.settings import load_settings
from emulator import Emulator

from .standins import discord as discord_standin
from .standins import slack as slack_standin

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
SIGNING_SECRET = "contract-signing-secret"
SLACK_TOKEN = "xoxb-contract-test-token"
FORM = "application/x-www-form-urlencoded"


@dataclass
class Driver:
    """One platform under the contract: its adapter, and a person talking to it.

    `say` sends a line as the person and returns a handle; `answer(handle, until)` returns the text of
    the bot's answer to it once `until` shows in it.
    """

    adapter: Adapter
    person: str  # the person id the ledger charges
    routes: set[tuple[str, str]]  # (method, path) the adapter serves on the process's HTTP server
    server: str  # the process's HTTP server, with the adapter's routes mounted
    say: Callable[[str], Any]
    answer: Callable[[Any, str], Any]
    connected: Callable[[], bool]


@pytest.fixture
async def service(client: IOClient, ledger: SQLiteLedger) -> AsyncIterator[Service]:
    async with httpx.AsyncClient() as downloads:
        yield Service(
            client, ledger, load_quota_table(), ServiceConfig(model=MODEL, vision_model=MODEL), downloads, store=ledger.store
        )


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting from the machine: every adapter is built from what the test gives it alone."""
    for name in list(os.environ):
        if name.startswith(("IOBOT_", "IOINTELLIGENCE_", "SLACK_", "DISCORD_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


async def serve(adapter: Adapter, service: Service, ledger: SQLiteLedger) -> tuple[str, Callable[[], Any]]:
    """The process's HTTP server with the adapter's routes, as the composition root mounts them."""
    app = make_http_app(HealthState(ledger, service.client, service.quotas), adapter.routes())
    runner, port = await start_http_server(app, "127.0.0.1", 0)
    return f"http://127.0.0.1:{port}", runner.cleanup


async def slack_driver(service: Service, ledger: SQLiteLedger, tmp_path: Path) -> AsyncIterator[Driver]:
    async with slack_standin.SlackStandIn(SLACK_TOKEN) as standin, httpx.AsyncClient(timeout=15) as http:
        settings = load_settings(
            SlackSettings, SLACK_BOT_TOKEN=SLACK_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=standin.api_url
        )
        adapter = slack.build(settings, service, state_dir=tmp_path)
        server, stop_server = await serve(adapter, service, ledger)

        async def say(text: str) -> str:
            key = f"k{len(standin.calls)}"
            body = slack_standin.command_body(
                text, user="U0ANA", response_url=standin.response_url(key), trigger_id=f"{key}.trigger"
            )
            ack = await http.post(
                f"{server}/slack/events", content=body, headers=slack_standin.signed_headers(body, SIGNING_SECRET, FORM)
            )
            assert ack.status_code == 200
            return key

        async def answer(key: str, until: str) -> str:
            def shown() -> str | None:
                text = "\n".join(slack_text(response) for response in standin.responses(key))
                return text if until in text else None

            return await standin.wait_for(shown)

        yield Driver(
            adapter,
            f"slack:{slack_standin.TEAM_ID}:U0ANA",
            {("POST", "/slack/events")},
            server,
            say,
            answer,
            lambda: bool(standin.calls_to("auth.test")),
        )
        await stop_server()
        await adapter.stop()


def slack_text(message: dict[str, Any]) -> str:
    """What a Slack message shows: its text and its blocks' texts."""
    texts = [message.get("text", "")]
    for block in message.get("blocks", []):
        if block["type"] == "section":
            texts.append(block["text"]["text"])
        elif block["type"] == "context":
            texts += [element["text"] for element in block["elements"]]
    return "\n".join(texts)


async def discord_driver(service: Service, ledger: SQLiteLedger, tmp_path: Path) -> AsyncIterator[Driver]:
    async with discord_standin.DiscordStandIn() as standin:
        settings = load_settings(
            DiscordSettings,
            DISCORD_BOT_TOKEN=discord_standin.TOKEN,
            DISCORD_API_URL=standin.api_url,
            DISCORD_GATEWAY_URL=standin.gateway_url,
        )
        adapter = discord.build(settings, service, state_dir=tmp_path)
        server, stop_server = await serve(adapter, service, ledger)

        async def say(text: str) -> dict[str, Any]:
            return await standin.post(f"<@{discord_standin.BOT_ID}> {text}", mention_bot=True)

        async def answer(message: dict[str, Any], until: str) -> str:
            def shown() -> str:  # every piece: the first replies to the question, the next to the one before
                pieces, parent = [], message
                while replies := standin.replies_to(parent):
                    parent = replies[0]
                    pieces.append(parent["content"])
                text = "\n".join(pieces)
                return text if until in text else ""

            return await standin.wait_for(shown)

        yield Driver(adapter, f"discord:{discord_standin.ALICE}", set(), server, say, answer, standin.ready.is_set)
        await stop_server()
        await adapter.stop()


async def console_driver(service: Service, ledger: SQLiteLedger, tmp_path: Path) -> AsyncIterator[Driver]:
    """The console has no settings: the composition root builds it when no platform is configured."""
    read_end, write_end = os.pipe()
    stdin, typing = os.fdopen(read_end, "r"), os.fdopen(write_end, "w")
    stdout = io.StringIO()
    adapter = ConsoleAdapter(service, user="ana", stdin=stdin, stdout=stdout)
    server, stop_server = await serve(adapter, service, ledger)

    async def say(text: str) -> int:
        said_at = len(stdout.getvalue())
        typing.write(text + "\n")
        typing.flush()
        return said_at

    async def answer(said_at: int, until: str) -> str:
        async with asyncio.timeout(10):
            while until not in (text := stdout.getvalue()[said_at:]):
                await asyncio.sleep(0.01)
        return text

    yield Driver(adapter, "console:ana", set(), server, say, answer, lambda: True)
    await stop_server()
    await adapter.stop()
    typing.close()  # the end of input: the reader thread ends


DRIVERS = {"slack": slack_driver, "discord": discord_driver, "console": console_driver}


@pytest.fixture(params=list(DRIVERS))
async def platform(
    request: pytest.FixtureRequest, environment: None, service: Service, ledger: SQLiteLedger, tmp_path: Path
) -> AsyncIterator[Driver]:
    """A driver for each platform, its adapter built but not started."""
    async for driver in DRIVERS[request.param](service, ledger, tmp_path):
        yield driver


@pytest.fixture
async def started(platform: Driver) -> Driver:
    await asyncio.wait_for(platform.adapter.start(), timeout=10)
    return platform


def api_calls(emulator: Emulator) -> list[Any]:
    return [r for r in emulator.requests if r.path in ("/chat/completions", "/workflows/run")]


async def test_start_returns_once_the_adapter_serves(platform: Driver, request: pytest.FixtureRequest) -> None:
    assert platform.adapter.name == request.node.callspec.params["platform"]
    await asyncio.wait_for(platform.adapter.start(), timeout=10)
    assert platform.connected()


async def test_a_question_is_answered_and_charged_to_the_person(
    started: Driver, ledger: SQLiteLedger, emulator: Emulator
) -> None:
    said = await started.say("What is io.net?")
    answer = await started.answer(said, "Llama-3.3-70B-Instruct")  # the answering model closes every answer
    assert 'you asked "What is io.net?"' in answer
    [row] = await ledger.usage(user=started.person)
    assert row.requests == 1 and row.total_tokens > 0
    assert len(api_calls(emulator)) == 1


async def test_help_costs_nothing(started: Driver, ledger: SQLiteLedger, emulator: Emulator) -> None:
    said = await started.say("help")
    answer = await started.answer(said, "Commands")
    assert "translate" in answer
    assert api_calls(emulator) == [] and await ledger.usage() == []


async def test_stop_lets_an_answer_in_flight_be_posted_and_is_idempotent(started: Driver, emulator: Emulator) -> None:
    emulator.answer_delay = 0.5
    said = await started.say("a slow one")
    async with asyncio.timeout(10):
        while not api_calls(emulator):  # the question is with the API
            await asyncio.sleep(0.01)
    await asyncio.wait_for(started.adapter.stop(), timeout=10)
    answer = await started.answer(said, "Llama-3.3-70B-Instruct")
    assert "a slow one" in answer
    await asyncio.wait_for(started.adapter.stop(), timeout=1)  # again: nothing left to do
    await asyncio.wait_for(started.adapter.wait(), timeout=5)  # a stopped adapter has ended


async def test_routes_are_served_by_the_process_http_server(platform: Driver) -> None:
    """What `routes()` gives is mounted beside /healthz; Slack's refuses an unsigned request there."""
    assert {
        (route.method, route.path) for route in platform.adapter.routes() if isinstance(route, web.RouteDef)
    } == platform.routes
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{platform.server}/healthz")).status_code == 200
        for method, path in platform.routes:
            assert (await http.request(method, platform.server + path, content=b"{}")).status_code == 401


@pytest.mark.parametrize("name", ["slack", "discord"])
async def test_a_refused_token_is_an_adapter_error_naming_the_setting(
    name: str, environment: None, service: Service, tmp_path: Path
) -> None:
    wrong = "wrong-token-9f8e7d"
    async with slack_standin.SlackStandIn(SLACK_TOKEN) as slack_api, discord_standin.DiscordStandIn() as discord_api:
        adapter: Adapter
        if name == "slack":
            settings = load_settings(
                SlackSettings, SLACK_BOT_TOKEN=wrong, SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=slack_api.api_url
            )
            adapter = slack.build(settings, service, state_dir=tmp_path)
        else:
            adapter = discord.build(
                load_settings(
                    DiscordSettings,
                    DISCORD_BOT_TOKEN=wrong,
                    DISCORD_API_URL=discord_api.api_url,
                    DISCORD_GATEWAY_URL=discord_api.gateway_url,
                ),
                service,
                state_dir=tmp_path,
            )
        with pytest.raises(AdapterError) as refused:
            await asyncio.wait_for(adapter.start(), timeout=10)
        await adapter.stop()
    assert f"{name.capitalize()} refused {name.upper()}_BOT_TOKEN" in str(refused.value) and wrong not in str(refused.value)


# --- the composition root ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "names"),
    [
        ({}, ["console"]),
        ({"DISCORD_BOT_TOKEN": "token"}, ["discord"]),
        ({"SLACK_BOT_TOKEN": SLACK_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET}, ["slack"]),
        ({"SLACK_BOT_TOKEN": SLACK_TOKEN, "SLACK_APP_TOKEN": "xapp-1", "DISCORD_BOT_TOKEN": "token"}, ["slack", "discord"]),
    ],
)
async def test_the_composition_root_builds_an_adapter_per_configured_platform(
    variables: dict[str, str], names: list[str], environment: None, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    adapters = build_adapters(load_settings(), service)
    try:
        assert [adapter.name for adapter in adapters] == names
    finally:
        for adapter in adapters:
            await adapter.stop()
