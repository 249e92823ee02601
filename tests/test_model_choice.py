"""A person's chat model: `model`, `model <name>`, `model default`, kept in the store, through the
service, the console, Slack (the real Bolt app) and Discord (the unmodified discord.py client)."""

from __future__ import annotations

import io
import re
from typing import cast

import discord
import httpx
import pytest

from adapters.console import ConsoleAdapter
from adapters.discord import model_completion
from bots.checks import model_findings
from core.commands import Command, parse_command
from core.errors import Outcome
from core.ledger import SQLiteLedger
from core.quotas import load_quota_table, parse_quota_table
from core.service import MODEL_SETTING, Request, Service, ServiceConfig
from core.settings import Settings, SettingsError, load_settings

from .standins.discord import ALICE, BOT_ID, EPHEMERAL, GENERAL, DiscordStandIn
from .test_discord import answer_to, make_adapter, running, standin  # noqa: F401  (the Discord tests' fixtures)
from .test_slack import ANA, shown, slack, start_bot  # noqa: F401  (the Slack tests' fixtures)
from .test_slack import TEAM_ID as SLACK_TEAM

DEFAULT = "meta-llama/Llama-3.3-70B-Instruct"
QWEN = "Qwen/Qwen3-235B-A22B-FP8"
MAVERICK = "meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8"
VISION = "meta-llama/Llama-3.2-90B-Vision-Instruct"
PERSON = "console:ana"

# A small table: Qwen's daily quota is spent by a few questions.
SMALL_TABLE = f"""
[[model]]
name = "{DEFAULT}"
api_daily_tokens = 500_000
context_length = 128_000

[[model]]
name = "{QWEN}"
api_daily_tokens = 3_000
context_length = 128_000

[[model]]
name = "{VISION}"
api_daily_tokens = 500_000
context_length = 16_000
images = true

[[model]]
name = "BAAI/bge-multilingual-gemma2"
kind = "embedding"
"""


def make_service(client, ledger, *, quotas=None, **config) -> Service:
    settings = ServiceConfig(model=DEFAULT, vision_model=VISION, max_tokens=256, **config)
    return Service(client, ledger, quotas or load_quota_table(), settings, httpx.AsyncClient(), store=ledger.store)


@pytest.fixture
def service(client, ledger) -> Service:
    """The service on the ledger's SQLite file, whose store keeps each person's model."""
    return make_service(client, ledger)


def chat_calls(emulator) -> list:
    return [r for r in emulator.requests if r.path == "/chat/completions"]


async def ask(service: Service, text: str, user: str = PERSON):
    return await service.handle(Request(user=user, text=text))


# --- the grammar -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("model", Command("model")),
        ("Model Qwen3-235B-A22B-FP8", Command("model", text="Qwen3-235B-A22B-FP8")),
        ("model default", Command("model", text="default")),
        ("model trains are fun", Command("ask", text="model trains are fun")),  # more than one word: a question
    ],
)
def test_model_takes_one_word_at_most(line, expected):
    assert parse_command(line) == expected


# --- the service ---------------------------------------------------------------------------------------


async def test_model_shows_the_default_and_the_text_models_with_their_quota_left(service, emulator, ledger):
    reply = await ask(service, "model")
    assert reply.private and reply.outcome is Outcome.OK
    assert reply.text.startswith("**Your chat model:** Llama-3.3-70B-Instruct (the default).")
    assert re.search(r"\nLlama-3\.3-70B-Instruct \(default\) +500,000\n", reply.text)
    assert "Qwen3-235B-A22B-FP8" in reply.text and "Vision" not in reply.text and "bge" not in reply.text
    assert emulator.requests == [] and await ledger.usage() == []  # free: no API call, no charge


async def test_a_chosen_model_answers_the_person_and_is_charged(service, emulator, ledger):
    reply = await ask(service, "model qwen3-235b-a22b-fp8")  # its short name, in any case
    assert reply.private and reply.outcome is Outcome.OK
    assert reply.text.startswith("Your chat model is now Qwen3-235B-A22B-FP8.")
    assert await ledger.store.setting(PERSON, MODEL_SETTING) == QWEN

    answer = await ask(service, "What is io.net?")
    assert answer.model == QWEN and chat_calls(emulator)[-1].body["model"] == QWEN
    [row] = await ledger.usage(user=PERSON)
    assert row.model == QWEN and row.total_tokens == answer.usage.total_tokens
    assert (await ask(service, "model")).text.startswith("**Your chat model:** Qwen3-235B-A22B-FP8 (your choice).")

    other = await ask(service, "What is io.net?", user="console:bea")  # everyone else keeps the default
    assert other.model == DEFAULT


async def test_model_default_goes_back_to_the_default(service, emulator, ledger):
    await ask(service, f"model {QWEN}")
    reply = await ask(service, "model DEFAULT")
    assert reply.text == "Your chat model is the default again: Llama-3.3-70B-Instruct."
    assert await ledger.store.setting(PERSON, MODEL_SETTING) is None
    assert (await ask(service, "hello")).model == DEFAULT


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("gpt-5", "There is no chat model `gpt-5` to pick."),
        ("Llama-3.2-90B-Vision-Instruct", "Llama-3.2-90B-Vision-Instruct is a vision model"),
        ("bge-multilingual-gemma2", "There is no chat model `bge-multilingual-gemma2` to pick."),
    ],
)
async def test_an_unknown_or_vision_model_is_refused_with_the_choices(client, ledger, emulator, name, problem):
    service = make_service(client, ledger, quotas=parse_quota_table(SMALL_TABLE))
    reply = await ask(service, f"model {name}")
    assert reply.private and reply.outcome is Outcome.REFUSED
    assert reply.text.startswith(problem)
    assert "Qwen3-235B-A22B-FP8" in reply.text and "3,000" in reply.text  # the choices, with their quota left
    assert await ledger.store.setting(PERSON, MODEL_SETTING) is None
    assert emulator.requests == []


async def test_a_model_without_quota_today_is_refused_then_stood_in_for(client, ledger, emulator):
    service = make_service(client, ledger, quotas=parse_quota_table(SMALL_TABLE))
    assert (await ask(service, f"model {QWEN}")).outcome is Outcome.OK
    reservation = await ledger.reserve(user="console:bea", model=QWEN, tokens=3_000, model_limit=3_000)
    await ledger.settle(reservation, prompt_tokens=2_000, completion_tokens=1_000, estimated=False)

    # Chosen before the quota was spent: the default model stands in, and the reply says so.
    answer = await ask(service, "What is io.net?")
    assert answer.model == DEFAULT and any("Qwen3-235B-A22B-FP8 had no quota left" in note for note in answer.notes)

    refused = await ask(service, f"model {QWEN}", user="console:cy")
    assert refused.outcome is Outcome.REFUSED and refused.private
    assert refused.text.startswith("Qwen3-235B-A22B-FP8 has no quota left today; it resets at 00:00 UTC")
    assert re.search(r"\nQwen3-235B-A22B-FP8 +0\n", refused.text)


async def test_only_the_configured_chat_models_may_be_picked(client, ledger):
    service = make_service(client, ledger, chat_models=(QWEN, DEFAULT))
    reply = await ask(service, f"model {MAVERICK}")
    assert reply.outcome is Outcome.REFUSED and "Llama-4-Maverick" not in reply.text.split("\n", 1)[1]
    assert (await ask(service, "model Qwen3-235B-A22B-FP8")).outcome is Outcome.OK


async def test_a_model_no_longer_offered_gives_way_to_the_default(client, ledger):
    await ledger.store.set_setting(PERSON, MODEL_SETTING, MAVERICK)  # picked before the operator narrowed the list
    service = make_service(client, ledger, chat_models=(QWEN, DEFAULT))
    assert await service.chat_model(PERSON) == DEFAULT
    assert (await ask(service, "hello")).model == DEFAULT


# --- settings and start-up checks ---------------------------------------------------------------------


def test_chat_models_must_be_text_models_of_the_quota_table(monkeypatch):
    monkeypatch.setenv("IOBOT_CHAT_MODELS", f"{QWEN}, nobody/unknown ,{VISION},BAAI/bge-multilingual-gemma2")
    settings = load_settings(Settings)
    assert settings.chat_models == [QWEN, "nobody/unknown", VISION, "BAAI/bge-multilingual-gemma2"]
    # Errors for `iobot run` too (strict=False), which then refuses to start.
    findings = model_findings(settings, parse_quota_table(SMALL_TABLE), None, strict=False)
    assert [str(finding) for finding in findings if finding.level == "error"] == [
        "error: IOBOT_CHAT_MODELS: model nobody/unknown is not in the quota table",
        f"error: IOBOT_CHAT_MODELS: model {VISION} is a vision model, not a text chat model",
        "error: IOBOT_CHAT_MODELS: model BAAI/bge-multilingual-gemma2 is an embedding model, not a text chat model",
    ]


def test_admins_are_person_ids(monkeypatch):
    monkeypatch.setenv("IOBOT_ADMINS", "slack:T1:U1, discord:123,console:ana")
    assert load_settings(Settings).admins == ["slack:T1:U1", "discord:123", "console:ana"]
    monkeypatch.setenv("IOBOT_ADMINS", "slack:T1:U1,U2")
    with pytest.raises(SettingsError, match=r"IOBOT_ADMINS: not person ids: U2; use slack:<team>:<user>"):
        load_settings(Settings)


# --- the console: the choice outlives a restart ------------------------------------------------------------


async def console_lines(service: Service, lines: str) -> str:
    stdout = io.StringIO()
    await ConsoleAdapter(service, "ana", stdin=io.StringIO(lines), stdout=stdout).run()
    return stdout.getvalue()


async def test_the_choice_survives_a_restart_on_the_same_ledger_file(client, emulator, tmp_path):
    path = str(tmp_path / "iobot.sqlite3")
    first = await SQLiteLedger.open(path, user_daily_tokens=50_000)
    try:
        shown_first = await console_lines(make_service(client, first), f"model {QWEN}\n")
    finally:
        await first.close()
    assert "Your chat model is now Qwen3-235B-A22B-FP8." in shown_first

    second = await SQLiteLedger.open(path, user_daily_tokens=50_000)  # a new process on the same file
    try:
        shown_second = await console_lines(make_service(client, second), "What is io.net?\nmodel\n")
        [row] = await second.usage(user=PERSON)
    finally:
        await second.close()
    assert chat_calls(emulator)[-1].body["model"] == QWEN and row.model == QWEN
    assert "-- Qwen3-235B-A22B-FP8 · " in shown_second
    assert "Your chat model: Qwen3-235B-A22B-FP8 (your choice)." in shown_second


# --- Slack: /io model, then a question ---------------------------------------------------------------


async def test_slack_model_then_ask_reaches_the_api_with_that_model(start_bot, emulator, ledger):  # noqa: F811
    bot = await start_bot()
    response, key = await bot.command("model Qwen3-235B-A22B-FP8")
    assert response.status_code == 200 and response.text == ""  # answered at once, privately
    [picked] = await bot.responses(key)
    assert picked["response_type"] == "ephemeral" and "Your chat model is now Qwen3-235B-A22B-FP8." in shown(picked)

    _, key = await bot.command("ask What is io.net?")
    [answer] = await bot.responses(key)
    assert answer["response_type"] == "in_channel" and "Qwen3-235B-A22B-FP8 ·" in shown(answer)
    assert chat_calls(emulator)[-1].body["model"] == QWEN
    [row] = await ledger.usage(user=f"slack:{SLACK_TEAM}:{ANA}")
    assert row.model == QWEN

    _, key = await bot.command("model gpt-5")
    [refused] = await bot.responses(key)
    assert refused["response_type"] == "ephemeral" and "There is no chat model `gpt-5` to pick." in shown(refused)


# --- Discord: /model, completed as the person types, then a mention -------------------------------------


async def test_discord_model_is_completed_picked_and_answers_a_mention(make_adapter, standin: DiscordStandIn, emulator, ledger):  # noqa: F811
    async with running(make_adapter(), standin):
        typing = await standin.invoke("model", [{"name": "name", "type": 3, "value": "qwen3", "focused": True}], kind=4)
        [completed] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/interactions/{typing['id']}/.*"))
        assert completed.body == {"type": 8, "data": {"choices": [{"name": QWEN, "value": QWEN}]}}

        picked = await standin.invoke("model", [{"name": "name", "type": 3, "value": QWEN}])
        [call] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/webhooks/\d+/{picked['token']}"))
        assert call.body["flags"] == EPHEMERAL and "Your chat model is now Qwen3-235B-A22B-FP8." in call.body["content"]

        question = await standin.post(f"<@{BOT_ID}> What is io.net?", mention_bot=True)
        [answer] = await answer_to(standin, question)
    assert answer["channel_id"] == str(GENERAL) and "\n-# Qwen3-235B-A22B-FP8 · " in answer["content"]
    assert chat_calls(emulator)[-1].body["model"] == QWEN
    [row] = await ledger.usage(user=f"discord:{ALICE}")
    assert row.model == QWEN


async def test_discord_completion_offers_default_and_at_most_25_models():
    complete = model_completion(["default", *(f"maker/model-{n}" for n in range(40))])
    interaction = cast(discord.Interaction, None)  # not read
    everything = await complete(interaction, "")
    assert len(everything) == 25 and everything[0].value == "default"
    assert [choice.value for choice in await complete(interaction, "MODEL-3")] == [
        "maker/model-3",
        *(f"maker/model-{n}" for n in range(30, 40)),
    ]
