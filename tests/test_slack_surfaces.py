"""Slack's message shortcuts and App Home end to end: the real Bolt app over HTTP on 127.0.0.1, signed
requests, the Slack stand-in, and the IO emulator behind the real service; and the app manifest that
declares them."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import SHORTCUTS, SlackAdapter
from adapters.slack_render import PLACEHOLDER
from core.commands import COMMANDS
from core.images import ImageLimits
from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.render import short_model_name
from core.service import Service, ServiceConfig

from .standins.slack import TEAM_ID, SlackStandIn, event_body, event_fields, home_opened_event, interaction_body, shortcut_fields
from .test_slack import (
    ANA,
    APP_TOKEN,
    BOT_TOKEN,
    CHANNEL,
    FORM,
    MODEL,
    VISION,
    Bot,
    api_calls,
    chat_calls,
    has_footer,
    serving,
    shown,
)

BEA = "U0BEA"  # who wrote the messages the shortcuts are used on
MANIFEST = Path(__file__).resolve().parents[1] / "slack-manifest.yml"


@pytest.fixture
async def service(client, ledger):
    config = ServiceConfig(model=MODEL, vision_model=VISION, max_tokens=2500, allow_loopback_images=True)
    async with httpx.AsyncClient() as public:
        yield Service(client, ledger, load_quota_table(), config, public, store=MemoryStore())


@pytest.fixture
async def slack():
    async with SlackStandIn(BOT_TOKEN) as standin:
        yield standin


@pytest.fixture
async def bot(service, slack):
    """The adapter serving `POST /slack/events` on 127.0.0.1, remembering in the service's store."""
    async with serving(service, slack, store=service.store) as served:
        yield served


async def use_shortcut(
    bot: Bot, callback_id: str, message: dict[str, Any], *, user: str = ANA, channel: str = CHANNEL
) -> tuple[httpx.Response, str]:
    """`user` picks the shortcut on `message`; returns Slack's acknowledgement and the key of its response_url."""
    key = uuid.uuid4().hex
    payload = shortcut_fields(
        callback_id, message, user=user, channel=channel, response_url=bot.slack.response_url(key), trigger_id=f"{key}.trigger"
    )
    return await bot.post(interaction_body(payload), FORM), key


async def answer_in_thread(bot: Bot, thread_ts: str) -> dict[str, Any]:
    """The bot's finished answer in a thread: a message with the footer naming the model and the tokens."""
    replies = await bot.slack.wait_for(lambda: [m for m in bot.slack.bot_replies(CHANNEL, thread_ts) if has_footer(m)])
    await bot.slack.wait_for(lambda: not bot.adapter.in_flight.busy)
    return replies[-1]


async def private_answer(bot: Bot, key: str) -> dict[str, Any]:
    [answer] = await bot.slack.wait_for(lambda: not bot.adapter.in_flight.busy and bot.slack.responses(key))
    return answer


# --- message shortcuts ------------------------------------------------------------------------------

# A message that starts with a command word: the shortcut works on it as text, whatever it says.
WRITTEN = "translate later: the launch moves to Monday and the budget review to Friday."


@pytest.mark.parametrize("callback_id", sorted(SHORTCUTS))
async def test_a_shortcut_is_answered_in_the_messages_thread_and_charged_to_who_used_it(
    bot, slack, emulator, ledger, callback_id
):
    message = slack.add_message(CHANNEL, BEA, WRITTEN)
    response, key = await use_shortcut(bot, callback_id, message)
    assert response.status_code == 200 and response.text == "", "acknowledged at once, with nothing to show"

    answer = await answer_in_thread(bot, message["ts"])
    assert answer["thread_ts"] == message["ts"]
    assert slack.calls_to("chat.postMessage")[0].args["text"] == PLACEHOLDER
    [call] = api_calls(emulator)
    if callback_id == "iobot_ask":
        assert call.path == "/chat/completions"
        assert call.body["messages"][-1] == {"role": "user", "content": WRITTEN}
    else:
        task = {"iobot_summarize": "summarize_text", "iobot_translate": "translate_text"}[callback_id]
        assert call.path == "/workflows/run" and call.body["text"] == WRITTEN and call.body["args"]["type"] == task
    if callback_id == "iobot_translate":
        assert call.body["args"]["target_language"] == "English"
        assert "*English:*" in shown(answer)

    rows = await ledger.usage()
    assert [(row.user, row.requests) for row in rows] == [(f"slack:{TEAM_ID}:{ANA}", 1)], "the shortcut's user, not the writer"
    assert slack.responses(key) == [], "nothing private to say"


async def test_a_shortcut_is_acknowledged_before_a_slow_api_answers(bot, service, slack, emulator, ledger):
    emulator.answer_delay = 10
    message = slack.add_message(CHANNEL, BEA, "What is io.net?")
    response, _ = await use_shortcut(bot, "iobot_ask", message)
    assert response.status_code == 200
    await slack.wait_for(lambda: chat_calls(emulator))
    assert [m["text"] for m in slack.bot_replies(CHANNEL, message["ts"])] == [PLACEHOLDER], "the answer is on its way"
    await service.drain(0)  # a shutdown mid-answer releases the reservation
    await slack.wait_for(lambda: not bot.adapter.in_flight.busy)
    assert await ledger.used_today() == 0


async def test_a_shortcut_over_socket_mode_is_acknowledged_on_the_socket_and_answered(service, emulator):
    async with SlackStandIn(BOT_TOKEN, app_token=APP_TOKEN) as slack:
        adapter = SlackAdapter(
            service,
            bot_token=BOT_TOKEN,
            signing_secret=None,
            app_token=APP_TOKEN,
            api_url=slack.api_url,
            file_hosts=["127.0.0.1"],
            image_limits=ImageLimits(),
            store=service.store,
        )
        try:
            await adapter.start()
            message = slack.add_message(CHANNEL, BEA, "Good morning")
            payload = shortcut_fields(
                "iobot_translate", message, user=ANA, channel=CHANNEL, response_url=slack.response_url("sm"), trigger_id="sm.1"
            )
            envelope = await slack.send_envelope("interactive", payload)
            await slack.wait_for(lambda: any(c.args.get("envelope_id") == envelope for c in slack.calls_to("socket_ack")))
            await slack.wait_for(lambda: [m for m in slack.bot_replies(CHANNEL, message["ts"]) if has_footer(m)])
            assert api_calls(emulator)[0].body["text"] == "Good morning"
        finally:
            await adapter.stop()


async def test_summarize_takes_the_whole_thread_the_message_is_in(bot, slack, emulator):
    parent = slack.add_message(CHANNEL, BEA, "Kick-off: when do we launch?")
    slack.add_message(CHANNEL, ANA, "Monday, if QA signs off.", thread_ts=parent["ts"])
    middle = slack.add_message(CHANNEL, BEA, "QA signed off this morning.", thread_ts=parent["ts"])
    slack.add_message(CHANNEL, ANA, "Then Monday it is.", thread_ts=parent["ts"])
    await use_shortcut(bot, "iobot_summarize", middle)

    answer = await answer_in_thread(bot, parent["ts"])
    assert answer["thread_ts"] == parent["ts"], "answered in the thread, not under the reply"
    [call] = api_calls(emulator)
    assert call.body["text"].splitlines() == [
        f"{BEA}: Kick-off: when do we launch?",
        f"{ANA}: Monday, if QA signs off.",
        f"{BEA}: QA signed off this morning.",
        f"{ANA}: Then Monday it is.",
    ]


async def test_summarize_of_a_thread_slack_will_not_read_summarizes_the_message_and_says_so(bot, slack, emulator):
    parent = slack.add_message(CHANNEL, BEA, "Kick-off")
    reply = slack.add_message(CHANNEL, ANA, "The launch is on Monday.", thread_ts=parent["ts"])
    slack.fail("conversations.replies", "html_502")
    await use_shortcut(bot, "iobot_summarize", reply)
    answer = await answer_in_thread(bot, parent["ts"])
    assert api_calls(emulator)[0].body["text"] == "The launch is on Monday."
    assert "I could not read this thread (Slack: HTTP 502), so only this message was summarized." in shown(answer)


async def test_translate_goes_into_the_default_language(bot, service, slack, emulator):
    service.config = dataclasses.replace(service.config, default_language="pt-BR")
    message = slack.add_message(CHANNEL, BEA, "Good morning, everyone")
    await use_shortcut(bot, "iobot_translate", message)
    await answer_in_thread(bot, message["ts"])
    [call] = api_calls(emulator)
    assert call.body["args"]["target_language"] == "pt-BR" and call.body["text"] == "Good morning, everyone"


@pytest.mark.parametrize("error", ["channel_not_found", "not_in_channel"])
async def test_a_shortcut_where_iobot_cannot_post_is_explained_privately_and_costs_nothing(bot, slack, emulator, ledger, error):
    private = "G0SECRET"
    slack.lock_out(private, error)
    message = slack.add_message(private, BEA, "What is io.net?")
    _, key = await use_shortcut(bot, "iobot_ask", message, channel=private)

    explanation = await private_answer(bot, key)
    assert explanation["response_type"] == "ephemeral"
    assert "not a member of this conversation" in shown(explanation) and "/invite @iobot" in shown(explanation)
    assert "Nothing was charged" in shown(explanation)
    assert slack.calls_to("chat.postEphemeral") == [], "Slack refuses that too in a conversation the bot is not in"
    assert emulator.requests == [] and await ledger.usage() == []
    with pytest.raises(SlackApiError) as refused:  # as the stand-in shows, the way real Slack answers it
        await AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url).chat_postEphemeral(channel=private, user=ANA, text="hi")
    assert refused.value.response["error"] == error


async def test_a_shortcut_whose_answer_slack_refuses_for_another_reason_says_so_privately(bot, slack, emulator, ledger):
    slack.fail("chat.postMessage", "html_502")
    message = slack.add_message(CHANNEL, BEA, "What is io.net?")
    _, key = await use_shortcut(bot, "iobot_summarize", message)
    explanation = await private_answer(bot, key)
    assert explanation["response_type"] == "ephemeral"
    assert "I could not post in this conversation (Slack: HTTP 502). Nothing was charged" in shown(explanation)
    assert emulator.requests == [] and await ledger.usage() == []


async def test_a_budget_refusal_reaches_only_the_person_who_used_the_shortcut(bot, slack, emulator, ledger):
    await ledger.set_user_limit(f"slack:{TEAM_ID}:{ANA}", 100)
    message = slack.add_message(CHANNEL, BEA, "What is io.net?")
    _, key = await use_shortcut(bot, "iobot_ask", message)

    refusal = await private_answer(bot, key)
    assert refusal["response_type"] == "ephemeral" and "daily budget" in shown(refusal)
    assert slack.calls_to("chat.delete"), "the placeholder was taken back"
    assert slack.bot_replies(CHANNEL, message["ts"]) == [], "nothing stays in the thread"
    assert chat_calls(emulator) == [] and await ledger.usage() == []


async def test_a_message_with_no_text_gets_a_private_word_and_no_call(bot, slack, emulator):
    message = slack.add_message(CHANNEL, BEA, "")
    _, key = await use_shortcut(bot, "iobot_translate", message)
    said = await private_answer(bot, key)
    assert said["response_type"] == "ephemeral" and "no text" in shown(said)
    assert emulator.requests == []


# --- App Home -----------------------------------------------------------------------------------------


async def open_home(bot: Bot, user: str = ANA, *, tab: str = "home") -> None:
    response = await bot.post(event_body(home_opened_event(user, tab=tab)), "application/json")
    assert response.status_code == 200


def view_text(view: dict[str, Any]) -> str:
    """Every text of a Home tab's sections and context lines."""
    texts = []
    for block in view["blocks"]:
        if block["type"] == "section":
            texts.append(block["text"]["text"])
        elif block["type"] == "context":
            texts += [element["text"] for element in block["elements"]]
    return "\n".join(texts)


async def test_the_home_tab_shows_todays_use_budget_model_and_commands(bot, slack, ledger):
    person = f"slack:{TEAM_ID}:{ANA}"
    _, key = await bot.command("ask What is io.net?")
    await bot.responses(key)
    await bot.adapter.service.store.set_setting(person, "model", "Qwen/Qwen3-235B-A22B-FP8")
    await open_home(bot)

    view = await slack.wait_for(lambda: slack.home_views.get(ANA))
    [publish] = slack.calls_to("views.publish")
    assert publish.args["user_id"] == ANA and view["type"] == "home"
    text = view_text(view)
    used = await ledger.used_today(user=person)
    assert used > 0
    assert f"Used {used:,} of your 50,000 tokens; *{50_000 - used:,} left*." in text
    assert "```\nmodel" in text and "Llama-3.3-70B-Instruct" in text, "today's use by model"
    assert "*Your model:* `Qwen3-235B-A22B-FP8` (your choice)" in text
    assert "None: you can ask away." in text
    for spec in COMMANDS.values():
        assert f"`/io {spec.example}`" in text, f"{spec.name} is listed with its example"
    assert len(view["blocks"]) <= 100, "Slack's limit for a Home tab"


async def test_the_home_tab_shows_the_limits_reached_and_the_default_model(bot, slack, ledger):
    person = f"slack:{TEAM_ID}:{ANA}"
    await ledger.set_user_limit(person, 200)
    row = load_quota_table().get(VISION)
    assert row is not None and row.api_daily_tokens is not None
    quota = row.api_daily_tokens
    spent = await ledger.reserve(user=f"slack:{TEAM_ID}:{BEA}", model=VISION, tokens=0, model_limit=None)
    await ledger.settle(spent, prompt_tokens=quota - 100, completion_tokens=0, estimated=False)
    await open_home(bot)
    view = await slack.wait_for(lambda: slack.home_views.get(ANA))
    text = view_text(view)
    assert f"*Your model:* `{short_model_name(MODEL)}` (the default)" in text
    assert "• Your daily budget: 200 of 200 tokens left." in text
    assert f"• {short_model_name(VISION)}'s daily quota (shared by everyone): 100 tokens left." in text
    assert short_model_name(MODEL) + "'s daily quota" not in text, "a model with room is no limit reached"


async def test_opening_the_messages_tab_publishes_nothing_and_a_refused_publish_is_only_logged(bot, slack, caplog):
    await open_home(bot, tab="messages")
    slack.fail("views.publish", "json_error")
    with caplog.at_level(logging.WARNING, logger="iobot.slack"):
        await open_home(bot)
        await slack.wait_for(lambda: slack.calls_to("views.publish"))
        await slack.wait_for(lambda: "could not publish the Home tab" in caplog.text)
    assert len(slack.calls_to("views.publish")) == 1 and slack.home_views == {}


# --- the manifest ---------------------------------------------------------------------------------


def test_the_manifest_declares_exactly_the_shortcuts_and_events_the_app_handles():
    manifest = yaml.safe_load(MANIFEST.read_text())
    shortcuts = manifest["features"]["shortcuts"]
    assert {shortcut["callback_id"] for shortcut in shortcuts} == set(SHORTCUTS)
    assert all(shortcut["type"] == "message" and len(shortcut["name"]) <= 24 for shortcut in shortcuts)
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    settings = manifest["settings"]
    assert settings["interactivity"] == {"is_enabled": True, "request_url": "https://YOUR-HOST/slack/events"}
    assert "app_home_opened" in settings["event_subscriptions"]["bot_events"]
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"commands", "mpim:history"} <= scopes and "im:read" not in scopes


async def test_every_event_and_shortcut_in_the_manifest_is_one_the_app_listens_to(bot, slack):
    """Bolt answers 404 to what no listener takes: each declared event and shortcut must get 200."""
    manifest = yaml.safe_load(MANIFEST.read_text())
    for declared in manifest["settings"]["event_subscriptions"]["bot_events"]:
        kind, _, channel_type = declared.partition(".")
        event: dict[str, Any] = {"type": kind, "user": BEA, "text": "hello", "ts": slack.next_ts(), "channel": "C0ELSEWHERE"}
        if channel_type:
            event["channel_type"] = {"channels": "channel", "groups": "group"}.get(channel_type, channel_type)
        if kind.startswith("assistant_thread_"):  # Bolt reads these events' thread before any listener
            event["assistant_thread"] = {"user_id": BEA, "channel_id": "D0BEA", "thread_ts": event["ts"], "context": {}}
        response = await bot.post(json.dumps(event_fields(event)), "application/json")
        assert response.status_code == 200, declared
    message = slack.add_message(CHANNEL, BEA, "hello")
    for shortcut in manifest["features"]["shortcuts"]:
        response, _ = await use_shortcut(bot, shortcut["callback_id"], message)
        assert response.status_code == 200, shortcut["callback_id"]
    response, _ = await use_shortcut(bot, "iobot_unknown", message)
    assert response.status_code == 404, "an undeclared shortcut is not handled"
    await slack.wait_for(lambda: not bot.adapter.in_flight.busy)
