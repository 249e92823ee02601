"""Streamed answers in Slack end to end: the real Bolt app over HTTP on 127.0.0.1, signed requests, the
Slack stand-in (with `chat.startStream`, `chat.appendStream` and `chat.stopStream`), and the IO emulator
behind the real service."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import httpx
import pytest
import yaml

from adapters.slack import CHANNEL_PROMPT, GREETING, SUGGESTED_PROMPTS, SUMMARIZE_CHANNEL, THINKING
from adapters.slack_render import PLACEHOLDER, streamable, to_markdown
from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.service import Service, ServiceConfig
from emulator import Fault

from .standins.slack import TEAM_ID, SlackStandIn
from .test_slack import ANA, BOT_TOKEN, CHANNEL, DM, MODEL, VISION, Bot, chat_calls, has_footer, serving
from .test_slack_surfaces import MANIFEST

STREAM_CALLS = ("chat.startStream", "chat.appendStream", "chat.stopStream", "chat.postMessage", "chat.update")


@pytest.fixture
async def service(client, ledger):
    config = ServiceConfig(model=MODEL, vision_model=VISION, max_tokens=2500, allow_loopback_images=True)
    async with httpx.AsyncClient() as public:
        yield Service(client, ledger, load_quota_table(), config, public, store=MemoryStore())


@pytest.fixture
async def slack():
    async with SlackStandIn(BOT_TOKEN, streaming=True) as standin:
        yield standin


@pytest.fixture
async def bot(service, slack):
    """The adapter serving `POST /slack/events` on 127.0.0.1, remembering in the service's store."""
    async with serving(service, slack, store=service.store) as served:
        yield served


async def settled(bot: Bot) -> None:
    """Wait until the adapter has answered what it was given."""
    await bot.slack.wait_for(lambda: bot.slack.calls_to("chat.startStream") or bot.slack.calls_to("chat.postMessage"))
    await bot.slack.wait_for(lambda: not bot.adapter.in_flight.busy)


def stream_calls(slack: SlackStandIn) -> list[str]:
    return [call.method for call in slack.calls if call.method in STREAM_CALLS]


def footer_text(message: dict[str, Any]) -> str:
    return json.dumps([block for block in message["blocks"] if block["type"] == "context"])


# --- streaming in threads ------------------------------------------------------------------------


async def test_a_mention_streams_its_answer_in_pieces_for_the_person_who_asked(bot, slack, emulator, ledger):
    event = bot.message("emulate:long=3000 tell me everything")
    await bot.deliver(event)
    await settled(bot)

    methods = stream_calls(slack)
    assert methods[0] == "chat.startStream" and methods[-1] == "chat.stopStream"
    assert set(methods[1:-1]) == {"chat.appendStream"}, "no placeholder, no chat.update: the answer streams"
    [start] = slack.calls_to("chat.startStream")
    assert start.args["channel"] == CHANNEL and start.args["thread_ts"] == event["ts"]
    assert (start.args["recipient_user_id"], start.args["recipient_team_id"]) == (ANA, TEAM_ID), "outside a DM"
    appended = [call.args["markdown_text"] for call in slack.calls_to("chat.appendStream")]
    [stop] = slack.calls_to("chat.stopStream")
    assert appended and stop.args.get("markdown_text"), "the text arrives in pieces: some while streaming, the rest at the end"

    [answer] = slack.bot_replies(CHANNEL, event["ts"])
    assert answer["text"] == "".join([*appended, stop.args["markdown_text"]])
    assert "    total += 26\n" in answer["text"], "the whole answer, its code block included"
    assert has_footer(answer) and not answer["streaming"]
    assert answer["blocks"][0] == {"type": "markdown", "text": answer["text"]}
    assert chat_calls(emulator)[0].body["stream"] is True
    [row] = await ledger.usage()
    assert row.user == f"slack:{TEAM_ID}:{ANA}" and row.requests == 1 and row.total_tokens > 0


async def test_a_direct_message_streams_without_recipient_fields(bot, slack):
    event = bot.message("hello there", channel=DM, mention=False)
    await bot.deliver(event)
    await settled(bot)

    [start] = slack.calls_to("chat.startStream")
    assert start.args["channel"] == DM and "recipient_user_id" not in start.args and "recipient_team_id" not in start.args
    [answer] = slack.bot_replies(DM, event["ts"])
    assert 'you asked "hello there"' in answer["text"] and has_footer(answer)


async def test_a_streamed_answer_never_pings_a_crowd(bot, slack):
    event = bot.message("please repeat @here and <!channel> and @everyone")
    await bot.deliver(event)
    await settled(bot)

    [answer] = slack.bot_replies(CHANNEL, event["ts"])
    streamed = [call.args.get("markdown_text", "") for call in slack.calls if call.method.startswith("chat.")]
    for text in [*streamed, answer["text"]]:
        assert "@here" not in text and "@everyone" not in text and "<!channel>" not in text


async def test_where_slack_refuses_streams_the_answer_edits_a_placeholder_and_stops_asking(bot, slack, emulator):
    slack.streaming = False  # chat.startStream answers not_allowed
    first = bot.message("emulate:long=7000 tell me everything")
    await bot.deliver(first)
    replies = await bot.answer(first)

    assert stream_calls(slack)[:2] == ["chat.startStream", "chat.postMessage"]
    assert slack.calls_to("chat.postMessage")[0].args["text"] == PLACEHOLDER
    assert 1 <= len(slack.calls_to("chat.update")) <= 4, "edits are throttled to one a second"
    assert has_footer(replies[-1]) and "    total += 26\n" in "\n".join(reply["text"] for reply in replies)

    second = bot.message("and again")
    await bot.deliver(second)
    await bot.answer(second)
    assert len(slack.calls_to("chat.startStream")) == 1, "a refusal is remembered: no stream is tried again"
    assert len(chat_calls(emulator)) == 2


async def test_a_stream_that_fails_to_open_for_another_reason_still_answers_by_placeholder(bot, slack):
    slack.fail("chat.startStream", "html_502", times=1)
    first = bot.message("hello there")
    await bot.deliver(first)
    [answer] = await bot.answer(first)
    assert 'you asked "hello there"' in answer["text"]

    second = bot.message("and again")
    await bot.deliver(second)
    await settled(bot)
    await slack.wait_for(lambda: len(slack.calls_to("chat.stopStream")) == 1)
    assert len(slack.calls_to("chat.startStream")) == 2, "a passing failure does not end streaming"


async def test_an_answer_the_api_cuts_keeps_what_arrived_says_so_and_is_charged(bot, slack, emulator, ledger):
    emulator.inject(Fault("cut_stream"))
    event = bot.message("tell me a story")
    await bot.deliver(event)
    await settled(bot)

    [answer] = slack.bot_replies(CHANNEL, event["ts"])
    assert answer["text"].startswith("Emulated answer from"), "the words that arrived stay"
    assert "cut off by the AI service" in footer_text(answer)
    assert stream_calls(slack)[-1] == "chat.stopStream" and not answer["streaming"]
    assert await ledger.reservations_in_flight() == 0, "what was used is settled, nothing is left reserved"


async def test_an_over_budget_person_is_told_privately_and_the_opened_stream_is_taken_back(bot, slack, emulator, ledger):
    person = f"slack:{TEAM_ID}:{ANA}"
    await ledger.set_user_limit(person, 1_000)
    reservation = await ledger.reserve(user=person, model=MODEL, tokens=0, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=1_000, completion_tokens=0, estimated=False)
    event = bot.message("What is io.net?")
    await bot.deliver(event)
    await settled(bot)

    [ephemeral] = slack.calls_to("chat.postEphemeral")
    assert ephemeral.args["user"] == ANA and "00:00 UTC" in json.dumps(ephemeral.args)
    assert len(slack.calls_to("chat.startStream")) == 1 and len(slack.calls_to("chat.delete")) == 1
    assert slack.bot_replies(CHANNEL, event["ts"]) == [], "the stream is gone"
    assert chat_calls(emulator) == []


async def test_a_stream_that_slack_stops_taking_ends_as_an_ordinary_message(bot, slack):
    slack.fail("chat.stopStream", "json_error")
    event = bot.message("hello there")
    await bot.deliver(event)
    await settled(bot)

    replies = slack.bot_replies(CHANNEL, event["ts"])
    assert replies and has_footer(replies[-1]) and 'you asked "hello there"' in replies[-1]["text"]


# --- the AI app surface --------------------------------------------------------------------------


def thread_started(
    user: str = ANA, *, channel: str = DM, thread_ts: str, viewing: str | None = None, kind: str = "assistant_thread_started"
) -> dict[str, Any]:
    """`assistant_thread_started` (or `kind`): `user` opened a new chat with iobot, beside `viewing` if given."""
    return {
        "type": kind,
        "assistant_thread": {
            "user_id": user,
            "context": {"channel_id": viewing, "team_id": TEAM_ID, "enterprise_id": None} if viewing else {},
            "channel_id": channel,
            "thread_ts": thread_ts,
        },
        "event_ts": thread_ts,
    }


async def test_a_new_assistant_chat_is_greeted_with_prompts_once_and_costs_nothing(bot, slack, emulator, ledger):
    thread_ts = slack.next_ts()
    await bot.deliver(thread_started(thread_ts=thread_ts), event_id="Ev0STARTED")
    await bot.deliver(thread_started(thread_ts=thread_ts), event_id="Ev0STARTED", **{"X-Slack-Retry-Num": "1"})
    [prompts] = await slack.wait_for(lambda: slack.calls_to("assistant.threads.setSuggestedPrompts"))
    await slack.wait_for(lambda: not bot.adapter.in_flight.busy)

    [greeting] = slack.calls_to("chat.postMessage")
    assert (greeting.args["channel"], greeting.args["thread_ts"]) == (DM, thread_ts) and greeting.args["text"] == GREETING
    assert (prompts.args["channel_id"], prompts.args["thread_ts"]) == (DM, thread_ts)
    assert prompts.args["prompts"] == SUGGESTED_PROMPTS
    assert 1 <= len(SUGGESTED_PROMPTS) <= 4, "Slack shows four prompts at most"
    assert emulator.requests == [] and await ledger.usage() == []


async def test_a_message_in_an_assistant_chat_shows_thinking_then_streams_with_the_thread_as_context(
    bot, slack, emulator, ledger
):
    thread_ts = slack.next_ts()
    await bot.deliver(thread_started(thread_ts=thread_ts))
    await slack.wait_for(lambda: slack.calls_to("assistant.threads.setSuggestedPrompts"))
    slack.add_message(DM, ANA, "my earlier question", thread_ts=thread_ts)
    event = bot.message("hello there", channel=DM, mention=False, thread_ts=thread_ts)
    await bot.deliver(event)
    await slack.wait_for(lambda: slack.calls_to("chat.stopStream") and not bot.adapter.in_flight.busy)

    methods = [c.method for c in slack.calls if c.method.startswith(("assistant.threads.setStatus", "chat.", "conversations."))]
    after_greeting = methods[methods.index("chat.startStream") :]
    assert after_greeting[:2] == ["chat.startStream", "assistant.threads.setStatus"]
    assert after_greeting[-1] == "chat.stopStream"
    statuses = [call.args["status"] for call in slack.calls_to("assistant.threads.setStatus")]
    assert statuses == [THINKING, ""], "shown while the model works, cleared after"
    [start] = slack.calls_to("chat.startStream")
    assert start.args["thread_ts"] == thread_ts and "recipient_user_id" not in start.args, "a DM needs no recipient"
    [call] = chat_calls(emulator)
    assert call.body["messages"][1:] == [
        {"role": "user", "content": "my earlier question"},
        {"role": "user", "content": "hello there"},
    ], "the thread goes along, the greeting does not"
    answer = slack.bot_replies(DM, thread_ts)[-1]
    assert 'you asked "hello there"' in answer["text"] and has_footer(answer)
    assert "left out" not in footer_text(answer)
    [row] = await ledger.usage()
    assert row.user == f"slack:{TEAM_ID}:{ANA}" and row.requests == 1


async def test_a_status_slack_will_not_set_does_not_stop_the_answer(bot, slack):
    slack.fail("assistant.threads.setStatus", "json_error")
    thread_ts = slack.add_message(DM, ANA, "earlier")["ts"]
    event = bot.message("hello there", channel=DM, mention=False, thread_ts=thread_ts)
    await bot.deliver(event)
    await slack.wait_for(lambda: slack.calls_to("chat.stopStream") and not bot.adapter.in_flight.busy)
    answer = slack.bot_replies(DM, thread_ts)[-1]
    assert 'you asked "hello there"' in answer["text"] and has_footer(answer)


async def ask_in_chat(bot: Bot, text: str, *, viewing: str | None, changed_to: str | None = None) -> dict[str, Any]:
    """Open a chat beside `viewing` (then beside `changed_to`), send `text` in it; returns the answer."""
    thread_ts = bot.slack.next_ts()
    await bot.deliver(thread_started(thread_ts=thread_ts, viewing=viewing))
    await bot.slack.wait_for(lambda: bot.slack.calls_to("assistant.threads.setSuggestedPrompts"))
    if changed_to:
        await bot.deliver(thread_started(thread_ts=thread_ts, viewing=changed_to, kind="assistant_thread_context_changed"))
    event = bot.message(text, channel=DM, mention=False, thread_ts=thread_ts)
    await bot.deliver(event)
    await bot.slack.wait_for(lambda: bot.slack.calls_to("chat.stopStream") and not bot.adapter.in_flight.busy)
    return bot.slack.bot_replies(DM, thread_ts)[-1]


async def test_a_chat_beside_a_channel_summarizes_what_was_said_there_today(bot, slack, emulator, ledger):
    slack.add_message(CHANNEL, "U0BEA", "last year's plan")  # the stand-in's clock starts in 2023
    slack.add_message(CHANNEL, "U0BEA", "the launch moves to Monday", ts=f"{time.time() - 2:.6f}")
    slack.add_message(CHANNEL, "U0CAL", "and the review to Friday", ts=f"{time.time() - 1:.6f}")
    answer = await ask_in_chat(bot, SUMMARIZE_CHANNEL, viewing=CHANNEL)

    assert slack.calls_to("assistant.threads.setSuggestedPrompts")[0].args["prompts"][0] == CHANNEL_PROMPT
    [call] = [request for request in emulator.requests if request.path == "/workflows/run"]
    assert call.body["args"]["type"] == "summarize_text"
    assert call.body["text"] == "U0BEA: the launch moves to Monday\nU0CAL: and the review to Friday", "today's, oldest first"
    assert has_footer(answer)
    [row] = await ledger.usage()
    assert row.user == f"slack:{TEAM_ID}:{ANA}", "charged to the person who asked"


async def test_a_channel_iobot_is_not_in_is_not_summarized_and_costs_nothing(bot, slack, emulator, ledger):
    slack.lock_out("C0PRIVATE", "not_in_channel")
    answer = await ask_in_chat(bot, SUMMARIZE_CHANNEL, viewing=CHANNEL, changed_to="C0PRIVATE")
    assert "invite me there first" in answer["text"]
    assert [call.args["channel"] for call in slack.calls_to("conversations.history")] == ["C0PRIVATE"], "the channel now beside"
    assert emulator.requests == [] and await ledger.usage() == []


async def test_a_chat_beside_no_channel_offers_no_channel_summary_and_explains_it(bot, slack, emulator, ledger):
    answer = await ask_in_chat(bot, SUMMARIZE_CHANNEL, viewing=None)
    assert slack.calls_to("assistant.threads.setSuggestedPrompts")[0].args["prompts"] == SUGGESTED_PROMPTS
    assert "beside a channel" in answer["text"]
    assert emulator.requests == [] and await ledger.usage() == []


def test_the_manifest_declares_the_ai_app_surface_the_app_serves():
    manifest = yaml.safe_load(MANIFEST.read_text())
    view = manifest["features"]["assistant_view"]
    assert view["assistant_description"] and view["suggested_prompts"] == SUGGESTED_PROMPTS
    assert "assistant:write" in manifest["oauth_config"]["scopes"]["bot"]
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    assert {"assistant_thread_started", "assistant_thread_context_changed", "message.im"} <= set(events)


def test_each_streamed_part_starts_the_next_and_defuses_crowd_pings():
    """chat.appendStream can only add text: what was streamed must begin whatever follows it."""
    text = "Tell @here and <!channel> and @every\none: `code <b>` @her e"
    parts = [streamable(text[:end]) for end in range(len(text) + 1)]
    for earlier, later in itertools.pairwise(parts):
        assert later.startswith(earlier)
    whole = to_markdown(text)
    assert whole.startswith(parts[-1])
    assert "@here" not in whole and "<!channel>" not in whole and "@every\none" in whole
