"""The Slack adapter end to end: the real Bolt app over HTTP on 127.0.0.1, signed requests, a stand-in
Slack Web API and file host, and the IO emulator behind the real service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from adapters.slack import WEB_API_TIMEOUT, SlackAdapter, thread_turns
from adapters.slack_render import PLACEHOLDER, from_slack, to_mrkdwn
from core.images import ImageLimits
from core.ledger import MemoryStore, Store
from core.quotas import load_quota_table
from core.service import Service, ServiceConfig

from .conftest import png_bytes
from .pdfs import encrypted, pdf_bytes
from .standins.slack import (
    BOT_ID,
    BOT_USER_ID,
    TEAM_ID,
    SlackStandIn,
    command_body,
    command_fields,
    event_body,
    event_fields,
    signed_headers,
)

SECRET = "8f742231b10e8888abcd99b1c2d3e4f5"
BOT_TOKEN = "xoxb-2000000000-3000000000-standintokenvalue"  # looks real, so a leak would be spotted
APP_TOKEN = "xapp-1-A0TEST-4000000000-standinapptoken"
MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION = "meta-llama/Llama-3.2-90B-Vision-Instruct"
ANA = "U0ANA"
CHANNEL = "C0GENERAL"
DM = "D0ANA"
FORM = "application/x-www-form-urlencoded"
CROWD_PING = re.compile(r"<!(channel|here|everyone)|@(channel|here|everyone)", re.IGNORECASE)


@dataclass
class Bot:
    """The adapter serving `POST /slack/events` on 127.0.0.1, and ways to talk to it as Slack does."""

    adapter: SlackAdapter
    slack: SlackStandIn
    url: str
    http: httpx.AsyncClient

    async def post(self, body: str, content_type: str, *, secret: str = SECRET, **headers: str) -> httpx.Response:
        signed = signed_headers(body, secret, content_type)
        return await self.http.post(self.url, content=body, headers={**signed, **headers})

    async def command(self, text: str, *, user: str = ANA) -> tuple[httpx.Response, str]:
        """Run `/io <text>`; returns the acknowledgement and the key its response_url answers go under."""
        key = uuid.uuid4().hex
        body = command_body(text, user=user, response_url=self.slack.response_url(key), trigger_id=f"{key}.trigger")
        return await self.post(body, FORM), key

    async def responses(self, key: str) -> list[dict[str, Any]]:
        """Every answer posted to the command's response_url, once the adapter is done with it."""
        # Once one answer arrived, the work is surely under way, so no answer in flight means done.
        return await self.slack.wait_for(lambda: not self.adapter.in_flight.busy and self.slack.responses(key))

    async def deliver(self, event: dict[str, Any], *, event_id: str | None = None, **headers: str) -> httpx.Response:
        response = await self.post(event_body(event, event_id=event_id), "application/json", **headers)
        assert response.status_code == 200
        return response

    def message(
        self,
        text: str,
        *,
        channel: str = CHANNEL,
        user: str = ANA,
        thread_ts: str | None = None,
        files: list[dict[str, Any]] | None = None,
        mention: bool = True,
    ) -> dict[str, Any]:
        """A person's message, stored in the stand-in, as the event Slack sends for it."""
        extra: dict[str, Any] = {"files": files, "subtype": "file_share"} if files else {}
        written = f"<@{BOT_USER_ID}> {text}" if mention else text
        message = self.slack.add_message(channel, user, written, thread_ts=thread_ts, **extra)
        kind = "app_mention" if mention and not channel.startswith("D") else "message"
        event = {**message, "type": kind, "channel": channel, "event_ts": message["ts"]}
        if kind == "app_mention":
            event.pop("subtype", None)  # app_mention events carry the files but no subtype
        else:
            event["channel_type"] = "im" if channel.startswith("D") else "channel"
        return event

    async def answer(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The bot's finished answer in the event's thread: a footer is shown, or a refusal or error."""
        thread_ts = event.get("thread_ts") or event["ts"]

        def finished() -> list[dict[str, Any]] | None:
            replies = [m for m in self.slack.bot_replies(event["channel"], thread_ts) if float(m["ts"]) > float(event["ts"])]
            if replies and (has_footer(replies[-1]) or replies[-1]["text"].startswith((":no_entry:", ":warning:"))):
                return replies
            return None

        return await self.slack.wait_for(finished)


def has_footer(message: dict[str, Any]) -> bool:
    return any(block["type"] == "context" and "tokens" in json.dumps(block) for block in message.get("blocks", []))


def shown(payload: dict[str, Any]) -> str:
    """Every text a message shows: its text and its blocks' texts."""
    texts = [payload.get("text", "")]
    for block in payload.get("blocks", []):
        if block["type"] == "section":
            texts.append(block["text"]["text"])
        elif block["type"] == "context":
            texts += [element["text"] for element in block["elements"]]
    return "\n".join(texts)


def chat_calls(emulator) -> list:
    return [r for r in emulator.requests if r.path == "/chat/completions"]


def api_calls(emulator) -> list:
    return [r for r in emulator.requests if r.path in ("/chat/completions", "/workflows/run")]


@pytest.fixture
async def service(client, ledger, request):
    """The service behind the bot; a test that needs room for a longer answer passes its `max_tokens` (indirect)."""
    max_tokens = getattr(request, "param", 2500)
    config = ServiceConfig(model=MODEL, vision_model=VISION, max_tokens=max_tokens, allow_loopback_images=True)
    async with httpx.AsyncClient() as public:
        yield Service(client, ledger, load_quota_table(), config, public, store=MemoryStore())


@pytest.fixture
async def slack():
    async with SlackStandIn(BOT_TOKEN, app_token=APP_TOKEN) as standin:
        yield standin


@contextlib.asynccontextmanager
async def serving(service: Service, slack: SlackStandIn, *, store: Store, timeout: float | None = None) -> AsyncIterator[Bot]:
    """An adapter on its own HTTP server on 127.0.0.1, stopped on leaving. `timeout` bounds each Web API
    call (the adapter's defaults otherwise); `store` is what it remembers."""
    limits = ImageLimits() if timeout is None else ImageLimits(timeout=timeout)
    adapter = SlackAdapter(
        service,
        bot_token=BOT_TOKEN,
        signing_secret=SECRET,
        api_url=slack.api_url,
        file_hosts=["127.0.0.1"],
        image_limits=limits,
        store=store,
        web_api_timeout=WEB_API_TIMEOUT if timeout is None else timeout,
    )
    app = web.Application()
    app.add_routes(adapter.routes())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with httpx.AsyncClient(timeout=15) as sender:
            yield Bot(adapter, slack, f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events", sender)
    finally:
        await adapter.stop()
        await runner.cleanup()


@pytest.fixture
async def start_bot(service, slack):
    """Starts an adapter (a fresh one each call, as after a restart) on its own HTTP server."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(timeout: float | None = None, store: MemoryStore | None = None) -> Bot:
            """`store` is what it remembers: a fresh one by default, a restart of a process that keeps nothing."""
            return await stack.enter_async_context(serving(service, slack, store=store or MemoryStore(), timeout=timeout))

        yield start


@pytest.fixture
async def bot(start_bot) -> Bot:
    return await start_bot()


# --- the slash command ---------------------------------------------------------------------------

SUMMARY_TEXT = "Ada Lovelace wrote the first program. She worked with Charles Babbage. The engine was never built."

COMMANDS = [
    ("help", "ephemeral", ["*Commands*", "• `translate &lt;language&gt; &lt;text&gt;`"]),
    ("help translate", "ephemeral", ["`translate &lt;language&gt; &lt;text&gt;`"]),
    ("usage", "ephemeral", ["*Your use today*", "of your 50,000 tokens"]),
    ("models", "ephemeral", ["*Models* (quotas reset at 00:00 UTC)", "```", "Llama-3.3-70B-Instruct"]),
    ("agents", "ephemeral", ["*Agents*", "• *Summary Agent* (`summary_agent`)"]),
    ("translate", "ephemeral", ["Usage: translate &lt;language&gt; &lt;text&gt;"]),
    ("ask What is io.net?", "in_channel", ['you asked "What is io.net?"', "Llama-3.3-70B-Instruct"]),
    ("Why is the sky blue?", "in_channel", ['you asked "Why is the sky blue?"']),
    (
        f"summarize 12 {SUMMARY_TEXT}",
        "in_channel",
        [
            "*Summary*\nAda Lovelace",
            "*Key points*\n• Ada Lovelace wrote the first program.\n• She worked",
            "_Llama-3.3-70B-Instruct · ~",  # an agent's cost is iobot's estimate, and says so
            " tokens (estimated)_",
        ],
    ),
    ("translate french Good morning", "in_channel", ["*French:* [french] Good morning"]),
    ("sentiment I love this great tool", "in_channel", ["*Sentiment:* positive (score 0.83)"]),
    ("classify bug,feature The app crashes: a bug", "in_channel", ["*Label:* bug (out of bug, feature)"]),
    ("moderate you are an idiot", "in_channel", ["*Flagged:* harassment", "```\ncategory", "harassment          0.62  over"]),
    (
        "entities Ada Lovelace met Charles Babbage in London in 1833.",
        "in_channel",
        ["*People:* Charles Babbage", "*Places:* London", "*Dates:* 1833"],
    ),
    ("reason How many legs do three spiders have?", "in_channel", ["1. Restate the problem", "Answer:"]),
    (
        "vision {images}/cat.png What colour is it?",
        "in_channel",
        ["Image 1: PNG, 64x48 pixels.", "Llama-3.2-90B-Vision-Instruct"],
    ),
]


@pytest.mark.parametrize(
    ("line", "visibility", "expected"), COMMANDS, ids=[line.split()[0] + str(i) for i, (line, _, _) in enumerate(COMMANDS)]
)
async def test_each_command_is_acknowledged_then_answered_through_response_url(
    bot, emulator, image_server, line, visibility, expected
):
    response, key = await bot.command(line.format(images=image_server))
    assert response.status_code == 200
    # An answer that takes the API a while is acknowledged with a note only the asker sees.
    assert response.text == ("" if visibility == "ephemeral" else "Working on it…"), response.text
    answers = await bot.responses(key)
    assert {answer["response_type"] for answer in answers} == {visibility}
    text = "\n".join(shown(answer) for answer in answers)
    for part in expected:
        assert part in text
    assert "**" not in text, "bold is Slack's single asterisk"
    if visibility == "in_channel":
        assert f"<@{ANA}> asked:" in answers[0]["blocks"][0]["elements"][0]["text"]
        assert len(api_calls(emulator)) == 1


async def test_a_slash_command_charges_the_person_by_team_and_user(bot, ledger):
    _, key = await bot.command("ask hello", user="U0BEA")
    await bot.responses(key)
    [row] = await ledger.usage(user=f"slack:{TEAM_ID}:U0BEA")
    assert row.requests == 1


async def test_the_acknowledgement_comes_at_once_however_slow_the_api(bot, service, emulator, slack, ledger):
    emulator.answer_delay = 10
    started = time.monotonic()
    response, key = await bot.command("ask Are you there?")
    acknowledged = time.monotonic() - started
    assert response.status_code == 200 and acknowledged < 3
    await emulator_saw_the_question(emulator)
    assert slack.responses(key) == [], "the answer is still on its way"

    # A shutdown mid-answer: the person is told, and nothing stays reserved.
    await service.drain(0)
    await bot.adapter.stop()
    [interrupted] = slack.responses(key)
    assert interrupted["response_type"] == "ephemeral" and "restarted before it could answer" in interrupted["text"]
    assert await ledger.used_today() == 0


async def emulator_saw_the_question(emulator) -> None:
    deadline = time.monotonic() + 5
    while not chat_calls(emulator):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_an_over_budget_person_is_told_privately_and_nothing_is_called(bot, ledger, emulator, slack):
    person = f"slack:{TEAM_ID}:{ANA}"
    await ledger.set_user_limit(person, 1_000)
    reservation = await ledger.reserve(user=person, model=MODEL, tokens=0, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=900, completion_tokens=0, estimated=False)
    _, key = await bot.command("ask What is io.net?")
    [answer] = await bot.responses(key)
    assert answer["response_type"] == "ephemeral"
    assert "You have 100 of your 1,000 tokens left today" in shown(answer) and "00:00 UTC" in shown(answer)

    event = bot.message("What is io.net?")
    await bot.deliver(event)
    [ephemeral] = await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"))
    assert ephemeral.args["user"] == ANA and ephemeral.args["thread_ts"] == event["ts"]
    assert "00:00 UTC" in shown(ephemeral.args)
    await slack.wait_for(lambda: slack.calls_to("chat.delete"))
    assert slack.bot_replies(CHANNEL, event["ts"]) == [], "the placeholder is gone"
    assert api_calls(emulator) == []


async def test_model_output_never_pings_a_crowd(bot, slack):
    line = "ask Repeat: &lt;!channel&gt; <!here> @everyone <!subteam^S1|@team> &lt;@U0BOSS&gt;"
    _, key = await bot.command(line)
    [answer] = await bot.responses(key)
    text = json.dumps(answer, ensure_ascii=False)
    assert "Repeat: &lt;!channel&gt; @\u200bhere @\u200beveryone" in text
    assert "&lt;@U0BOSS&gt;" in text
    assert not CROWD_PING.search(text)
    assert "<!" not in text and "<@U0BOSS>" not in text


async def test_slack_can_verify_the_request_url(bot):
    response = await bot.post(json.dumps({"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRNFdxV"}), "application/json")
    assert response.status_code == 200 and response.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV"}


# --- signatures and retries ----------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["missing", "wrong", "six minutes old"])
async def test_a_request_without_a_valid_signature_is_refused_and_nothing_runs(bot, slack, emulator, ledger, problem):
    for body, content_type in (
        (command_body("ask hi", user=ANA, response_url=slack.response_url("x"), trigger_id="t"), FORM),
        (event_body(bot.message("hi")), "application/json"),
    ):
        if problem == "missing":
            headers = {"Content-Type": content_type}
        elif problem == "wrong":
            headers = signed_headers(body, "not-the-signing-secret", content_type)
        else:
            headers = signed_headers(body, SECRET, content_type, timestamp=int(time.time()) - 360)
        response = await bot.http.post(bot.url, content=body, headers=headers)
        assert response.status_code == 401
    await asyncio.sleep(0.2)
    assert slack.calls == [] and emulator.requests == []
    assert await ledger.usage() == []


async def test_a_retried_event_is_answered_and_charged_once(start_bot, slack, emulator, ledger):
    bot = await start_bot()
    emulator.answer_delay = 0.5
    event = bot.message("What is io.net?")
    body_id = "Ev0RETRIED"
    await bot.deliver(event, event_id=body_id)
    await bot.deliver(event, event_id=body_id, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    [answer] = await bot.answer(event)
    await bot.deliver(event, event_id=body_id, **{"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_timeout"})

    # After a restart only the ledger remembers: the retry is refused there, and its placeholder removed.
    restarted = await start_bot()
    await restarted.deliver(event, event_id=body_id, **{"X-Slack-Retry-Num": "3", "X-Slack-Retry-Reason": "http_timeout"})
    await slack.wait_for(lambda: slack.calls_to("chat.delete") and not restarted.adapter.in_flight.busy)

    assert len(chat_calls(emulator)) == 1
    [row] = await ledger.usage()
    assert row.requests == 1
    assert slack.bot_replies(CHANNEL, event["ts"]) == [answer]
    assert len(slack.calls_to("chat.postMessage")) == 2  # the answer, and the restarted one's placeholder
    assert slack.calls_to("chat.postEphemeral") == [], "a duplicate is not even told it is one"


async def test_a_mention_in_a_thread_the_bot_follows_is_answered_once(bot, slack, emulator):
    first = bot.message("What is io.net?")
    await bot.deliver(first)
    await bot.answer(first)
    # A mention in that thread comes as app_mention and as message: two events, one message.
    again = bot.message("And what is iobot?", thread_ts=first["ts"])
    as_message = {**again, "type": "message", "channel_type": "channel"}
    await bot.deliver(as_message)
    await bot.deliver(again)
    await slack.wait_for(lambda: len(chat_calls(emulator)) == 2 and has_footer(slack.bot_replies(CHANNEL, first["ts"])[-1]))
    await asyncio.sleep(0.2)
    assert len(chat_calls(emulator)) == 2
    assert len(slack.bot_replies(CHANNEL, first["ts"])) == 2


# --- conversations -------------------------------------------------------------------------------


async def test_a_mention_with_two_images_asks_the_vision_model_about_both(bot, slack, emulator):
    listed = slack.add_file("cat.png", png_bytes(64, 48))
    only_id = slack.add_file("dog.png", png_bytes(32, 32, (0, 90, 200)))
    document = slack.add_file("song.mp3", b"ID3", mimetype="audio/mpeg")
    files = [listed, {"id": only_id["id"], "file_access": "check_file_info"}, document]
    event = bot.message("What is in these pictures?", files=files)
    await bot.deliver(event)
    [answer] = await bot.answer(event)

    [call] = chat_calls(emulator)
    assert call.body["model"] == VISION
    content = call.body["messages"][-1]["content"]
    assert {"type": "text", "text": "What is in these pictures?"} in content
    urls = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
    assert len(urls) == 2 and all(url.startswith("data:image/png;base64,") for url in urls)
    assert [call.args["file"] for call in slack.calls_to("files.info")] == [only_id["id"]]
    downloads = slack.calls_to("download")
    assert len(downloads) == 2 and all(call.token == BOT_TOKEN for call in downloads)

    text = shown(answer)
    assert "Image 1: PNG, 64x48 pixels." in text and "Image 2: PNG, 32x32 pixels." in text
    assert "song.mp3 is not an image, a text file or a PDF, so it was not read." in text
    first_post = slack.calls_to("chat.postMessage")[0].args
    assert first_post["thread_ts"] == event["ts"] and first_post["text"] == PLACEHOLDER


REPORT = pdf_bytes(["Quarterly report", None, "Revenue grew by 12 percent."])


async def test_a_text_file_and_a_pdf_reach_the_model_as_text_and_are_charged(bot, slack, emulator, ledger):
    notes = slack.add_file("notes.txt", b"Ship on Friday.\r\n", mimetype="text/plain")
    report = slack.add_file("report.pdf", REPORT, mimetype="application/pdf")
    event = bot.message("What do these say?", files=[notes, report])
    await bot.deliver(event)
    [answer] = await bot.answer(event)

    [call] = chat_calls(emulator)
    assert call.body["model"] == MODEL
    assert call.body["messages"][-1]["content"] == (
        'What do these say?\n\n<file name="notes.txt">\nShip on Friday.\n\n</file>\n\n'
        '<file name="report.pdf">\nQuarterly report\n\nRevenue grew by 12 percent.\n</file>'
    )
    downloads = slack.calls_to("download")
    assert len(downloads) == 2 and all(call.token == BOT_TOKEN for call in downloads)
    [row] = await ledger.usage(user=f"slack:{TEAM_ID}:{ANA}")
    assert row.requests == 1 and row.prompt_tokens > 0 and has_footer(answer)


async def test_summarize_with_a_pdf_summarizes_the_pdf(bot, slack, emulator, ledger):
    event = bot.message("summarize 20", files=[slack.add_file("report.pdf", REPORT, mimetype="application/pdf")])
    await bot.deliver(event)
    [answer] = await bot.answer(event)
    [call] = api_calls(emulator)
    assert call.path == "/workflows/run" and call.body["args"]["max_words"] == 20
    assert "Revenue grew by 12 percent." in call.body["text"]
    assert await ledger.used_today(user=f"slack:{TEAM_ID}:{ANA}") > 0 and has_footer(answer)


@pytest.mark.parametrize(
    ("name", "body", "mimetype", "said"),
    [
        ("secret.pdf", encrypted(REPORT), "application/pdf", "secret.pdf is encrypted, so it could not be read"),
        ("scan.pdf", pdf_bytes([None, None]), "application/pdf", "scan.pdf has no text to read"),
        ("broken.pdf", REPORT[:150], "application/pdf", "broken.pdf could not be read: the file is damaged or not a PDF."),
        ("setup.txt", b"MZ\x90\x00\x03\x00", "text/plain", "setup.txt is not a text file: it holds binary data."),
        ("big.log", b"x" * (1024 * 1024 + 1), "text/plain", "big.log is over the 1 MB limit for text files."),
    ],
)
async def test_a_file_that_cannot_be_read_is_refused_saying_why_and_costs_nothing(
    bot, slack, emulator, ledger, name, body, mimetype, said
):
    event = bot.message("summarize", files=[slack.add_file(name, body, mimetype=mimetype)])
    await bot.deliver(event)
    [answer] = await bot.answer(event)
    assert answer["text"].startswith(f":no_entry: {said}")
    assert api_calls(emulator) == []
    assert await ledger.usage(user=f"slack:{TEAM_ID}:{ANA}") == [] and await ledger.reservations_in_flight() == 0


async def test_a_file_longer_than_the_models_context_is_cut_with_a_note(bot, slack, emulator, ledger):
    await ledger.set_user_limit(f"slack:{TEAM_ID}:{ANA}", 1_000_000)  # room for a whole context
    long = slack.add_file("server.log", b"GET /healthz 200\n" * 50_000, mimetype="text/plain")  # 850 KB
    event = bot.message("Any errors?", files=[long])
    await bot.deliver(event)
    *_, last = await bot.answer(event)  # the emulator's answer quotes the question at length
    assert "server.log is too long for Llama-3.3-70B-Instruct's context: only its first 4" in shown(last)
    [call] = chat_calls(emulator)
    assert call.body["messages"][-1]["content"].endswith("GET /healthz 200\n</file>")
    assert 360_000 < len(call.body["messages"][-1]["content"]) < 384_000  # 128,000 tokens less the answer's room


async def test_a_reply_in_the_thread_continues_the_conversation_with_its_history(bot, slack, emulator):
    first = bot.message("What is io.net?")
    await bot.deliver(first)
    [answer] = await bot.answer(first)
    # Someone else's thread, which the bot never answered in, is not its business.
    elsewhere = slack.add_message(CHANNEL, ANA, "Lunch?")
    await bot.deliver({**bot.message("Pizza!", thread_ts=elsewhere["ts"], mention=False), "channel_type": "channel"})

    follow_up = bot.message("And who runs it?", thread_ts=first["ts"], mention=False)
    await bot.deliver(follow_up)
    [reply] = await bot.answer(follow_up)
    assert reply["thread_ts"] == first["ts"] and len(slack.bot_replies(CHANNEL, first["ts"])) == 2

    calls = chat_calls(emulator)
    assert len(calls) == 2, "the other thread was ignored"
    sent = calls[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "What is io.net?", "without the bot's mention"
    assert sent[2]["content"] == from_slack(answer["text"]) and sent[2]["content"].startswith("Emulated answer")
    assert sent[3]["content"] == "And who runs it?"
    assert "The conversation had 3 earlier messages." in reply["text"]
    [history_call] = slack.calls_to("conversations.replies")
    assert history_call.args["ts"] == first["ts"]


async def test_a_restart_sharing_the_store_still_follows_its_threads_and_skips_retries(start_bot, slack, emulator):
    store = MemoryStore()
    bot = await start_bot(store=store)
    first = bot.message("What is io.net?")
    await bot.deliver(first, event_id="Ev0FIRST")
    await bot.answer(first)

    restarted = await start_bot(store=store)
    await restarted.deliver(first, event_id="Ev0FIRST", **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    follow_up = restarted.message("And who runs it?", thread_ts=first["ts"], mention=False)
    await restarted.deliver(follow_up)
    await restarted.answer(follow_up)
    assert len(chat_calls(emulator)) == 2, "the follow-up, with no mention, was answered; the retry was not"
    assert len(slack.calls_to("chat.postMessage")) == 2, "not even a placeholder for the retry"


async def test_a_direct_message_is_answered_in_its_thread_and_bots_edits_and_deletions_are_ignored(bot, slack, emulator):
    ignored = [
        {
            "type": "message",
            "channel": DM,
            "channel_type": "im",
            "bot_id": "B0OTHER",
            "subtype": "bot_message",
            "text": "beep",
            "ts": slack.next_ts(),
        },
        {
            "type": "message",
            "channel": DM,
            "channel_type": "im",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "text": "my own answer",
            "ts": slack.next_ts(),
        },
        {
            "type": "message",
            "channel": DM,
            "channel_type": "im",
            "subtype": "message_changed",
            "ts": slack.next_ts(),
            "message": {"user": ANA, "text": "edited", "ts": "1.0"},
        },
        {
            "type": "message",
            "channel": DM,
            "channel_type": "im",
            "subtype": "message_deleted",
            "ts": slack.next_ts(),
            "deleted_ts": "1.0",
        },
    ]
    for event in ignored:
        await bot.deliver(event)
    event = bot.message("hello there", channel=DM, mention=False)
    await bot.deliver(event)
    [answer] = await bot.answer(event)
    assert answer["thread_ts"] == event["ts"] and 'you asked "hello there"' in answer["text"]
    assert len(chat_calls(emulator)) == 1
    assert len(slack.calls_to("chat.postMessage")) == 1


async def test_a_long_answer_streams_into_a_placeholder_and_splits_without_breaking_code(bot, slack, emulator):
    event = bot.message("emulate:long=7000 tell me everything")
    await bot.deliver(event)
    replies = await bot.answer(event)

    posts, updates = slack.calls_to("chat.postMessage"), slack.calls_to("chat.update")
    assert posts[0].args["text"] == PLACEHOLDER
    assert 1 <= len(updates) <= 4, "edits are throttled, not one per streamed piece"
    assert len(replies) >= 3
    for reply in replies:
        assert len(reply["text"]) <= 3000
        assert reply["text"].count("```") % 2 == 0, "every message closes the code blocks it opens"
    whole = "\n".join(reply["text"] for reply in replies)
    assert all(f"    total += {n}\n" in whole for n in range(1, 27))
    assert [has_footer(reply) for reply in replies] == [False] * (len(replies) - 1) + [True]
    assert chat_calls(emulator)[0].body["stream"] is True


# --- files: only Slack's hosts get the token -----------------------------------------------------


async def test_the_bot_token_never_goes_to_another_host(bot, slack, emulator):
    port = slack.base_url.rsplit(":", 1)[1]
    elsewhere = f"http://localhost:{port}/files/F0ELSEWHERE/cat.png"
    foreign = slack.add_file("foreign.png", png_bytes(), url=elsewhere)
    redirected = slack.add_file("moved.png", png_bytes(), redirect_to=elsewhere)
    event = bot.message("What is this?", files=[foreign, redirected])
    await bot.deliver(event)
    [answer] = await bot.answer(event)

    downloads = slack.calls_to("download")
    assert [call.args["host"] for call in downloads] == [f"127.0.0.1:{port}"], "only the Slack host was contacted"
    assert downloads[0].token == BOT_TOKEN
    text = shown(answer)
    assert "foreign.png: its link is not on Slack's file hosts" in text
    assert "moved.png: the link redirects to" in text
    assert api_calls(emulator) == []


async def test_a_download_that_returns_a_web_page_names_the_missing_scope(bot, slack, emulator):
    event = bot.message("What is this?", files=[slack.add_file("cat.png", png_bytes(), html=True)])
    await bot.deliver(event)
    [answer] = await bot.answer(event)
    assert "Slack sent a web page instead of the file" in answer["text"] and "files:read" in answer["text"]
    assert api_calls(emulator) == []


# --- Slack failing: every Web API call, every way ---------------------------------------------------

# What the adapter makes of each fault the stand-in serves.
SAID = {
    "json_error": "fatal_error",
    "text_405": "HTTP 405",
    "html_502": "HTTP 502",
    "timeout": "no answer in time",
    "drop": "the connection failed",
}
FAILING = ["conversations.replies", "files.info", "download", "chat.postMessage", "chat.update", "response"]


def no_loud_logs(caplog) -> None:
    """Nothing above WARNING, and no traceback at all, reached the log."""
    loud = [r for r in caplog.records if r.levelno > logging.WARNING or r.exc_info]
    assert not loud, [f"{r.name}: {r.getMessage()}" for r in loud]


@pytest.mark.parametrize("fault", list(SAID))
@pytest.mark.parametrize("method", FAILING)
async def test_a_failing_web_api_call_still_answers_and_charges_only_what_was_delivered(
    start_bot, slack, emulator, ledger, caplog, method, fault
):
    caplog.set_level(logging.INFO)
    bot = await start_bot(timeout=0.5)
    slack.fail(method, fault)
    if method == "response":
        _, key = await bot.command("ask What is io.net?")
        await slack.wait_for(lambda: slack.calls_to("response_failed") and not bot.adapter.in_flight.busy)
        # The answer was computed and settled before Slack failed to take it: it stays charged, and says so.
        [row] = await ledger.usage()
        assert row.requests == 1 and slack.responses(key) == []
        assert any("response_url" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert any("stay charged" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        no_loud_logs(caplog)
        return

    if method == "conversations.replies":
        parent = slack.add_message(CHANNEL, ANA, "Earlier: what is io.net?")
        event = bot.message("And who runs it?", thread_ts=parent["ts"])
    elif method in ("files.info", "download"):
        image = slack.add_file("cat.png", png_bytes())
        listed = image if method == "download" else {"id": image["id"], "file_access": "check_file_info"}
        event = bot.message("What is in this picture?", files=[listed])
    else:
        event = bot.message("What is io.net?")
    await bot.deliver(event)

    if method == "chat.postMessage":  # the placeholder could not go up: nothing is asked, nothing charged
        await slack.wait_for(lambda: slack.calls_to("chat.postMessage") and not bot.adapter.in_flight.busy)
        assert api_calls(emulator) == [] and await ledger.usage() == []
        assert any("left unanswered" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        no_loud_logs(caplog)
        return

    [answer] = await bot.answer(event)
    text = shown(answer)
    if method == "conversations.replies":  # answered without the thread, with a note
        assert has_footer(answer) and f"I could not read this thread's earlier messages (Slack: {SAID[fault]})." in text
        assert [m["role"] for m in chat_calls(emulator)[0].body["messages"]] == ["system", "user"]
    elif method == "files.info":  # the one image could not be read: a clear refusal, and no call
        assert text.startswith(":no_entry:") and f"(Slack: {SAID[fault]})" in text
    elif method == "download":
        assert text.startswith(":no_entry:") and "cat.png" in text
    else:  # chat.update: the answer went up as a new message in place of the placeholder
        assert has_footer(answer) and slack.bot_replies(CHANNEL, event["ts"]) == [answer]
        assert answer["ts"] != slack.calls_to("chat.postMessage")[0].args.get("ts")
    rows = await ledger.usage()
    if has_footer(answer):
        assert [row.requests for row in rows] == [1] and len(chat_calls(emulator)) == 1
    else:
        assert rows == [] and api_calls(emulator) == []
    await slack.wait_for(lambda: not bot.adapter.in_flight.busy)
    no_loud_logs(caplog)


async def test_a_private_reply_slack_will_not_take_becomes_a_public_notice(bot, slack, ledger, caplog):
    await ledger.set_user_limit(f"slack:{TEAM_ID}:{ANA}", 100)
    slack.fail("chat.postEphemeral", "text_405")
    event = bot.message("What is io.net?")
    await bot.deliver(event)
    [notice] = await bot.answer(event)
    assert notice["text"] == ":warning: I could not send my reply privately (Slack: HTTP 405)."
    assert "budget" not in shown(notice), "what was private stays private"
    no_loud_logs(caplog)


async def test_a_placeholder_slack_will_not_delete_stays_and_the_private_reply_still_goes(bot, slack, ledger, caplog):
    await ledger.set_user_limit(f"slack:{TEAM_ID}:{ANA}", 100)
    slack.fail("chat.delete", "drop")
    event = bot.message("What is io.net?")
    await bot.deliver(event)
    await slack.wait_for(lambda: slack.calls_to("chat.delete") and not bot.adapter.in_flight.busy)
    [ephemeral] = slack.calls_to("chat.postEphemeral")
    assert "daily budget" in shown(ephemeral.args)
    assert any("could not delete" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    no_loud_logs(caplog)


async def test_an_answer_that_outgrows_a_failing_edit_is_posted_in_order(bot, slack, emulator):
    slack.fail("chat.update", "html_502")
    event = bot.message("emulate:long=7000 tell me everything")
    await bot.deliver(event)
    replies = await bot.answer(event)
    assert len(replies) >= 3 and [has_footer(reply) for reply in replies][-1]
    whole = "\n".join(reply["text"] for reply in replies)
    assert all(f"    total += {n}\n" in whole for n in range(1, 27)), "every part, in order"
    assert PLACEHOLDER not in whole


async def test_the_part_of_a_long_answer_slack_would_not_take_is_named(bot, slack, ledger, caplog):
    slack.fail("chat.postMessage", "html_502", after=1)  # the placeholder goes up, nothing after it
    event = bot.message("emulate:long=7000 tell me everything")
    await bot.deliver(event)
    await slack.wait_for(lambda: slack.calls_to("chat.postMessage")[1:] and not bot.adapter.in_flight.busy)
    [shown_part] = slack.bot_replies(CHANNEL, event["ts"])
    assert shown_part["text"].startswith("This paragraph comes from the IO Intelligence emulator"), "the first part"
    assert "The rest of this answer could not be posted (Slack: HTTP 502)." in shown(shown_part)
    assert [row.requests for row in await ledger.usage()] == [1], "computed and settled: it stays charged"
    assert any("stay charged" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    no_loud_logs(caplog)


# --- long threads ----------------------------------------------------------------------------------


async def test_a_thread_over_a_thousand_messages_sends_its_first_and_newest_in_few_calls(bot, slack, emulator):
    parent = slack.add_message(CHANNEL, ANA, "Kick-off: the launch plan")
    for n in range(1, 1_300):
        slack.add_message(CHANNEL, "U0BEA" if n % 2 else ANA, f"reply {n}", thread_ts=parent["ts"])
    event = bot.message("So what did we decide?", thread_ts=parent["ts"])
    await bot.deliver(event)
    [answer] = await bot.answer(event)

    calls = slack.calls_to("conversations.replies")
    assert len(calls) <= 8 and all(call.args["ts"] == parent["ts"] for call in calls)
    sent = "\n".join(m["content"] for m in chat_calls(emulator)[0].body["messages"][1:-1])
    assert sent.startswith("Kick-off: the launch plan") and sent.endswith("reply 1299")
    assert "reply 1250" in sent and "reply 1249" not in sent and "reply 999" not in sent, "the newest 50, not the oldest pages"
    assert "This thread is long: its first message and the newest" in shown(answer)


# --- answers as files ------------------------------------------------------------------------------

VERY_LONG = "emulate:long=20000 tell me everything"  # over six messages of 3,000 characters


async def emulator_answer(client, question: str) -> str:
    """The emulator's answer to `question`, asked directly (its long answers are the same every time)."""
    return (await client.chat(MODEL, [{"role": "user", "content": question}], max_tokens=6000)).content


@pytest.mark.parametrize("service", [6000], indirect=True)  # max_tokens: room for the answer
async def test_a_very_long_answer_is_its_beginning_in_the_thread_and_all_of_it_as_a_file(bot, slack, client):
    event = bot.message(VERY_LONG)
    await bot.deliver(event)
    await slack.wait_for(lambda: slack.calls_to("files.completeUploadExternal") and not bot.adapter.in_flight.busy)

    beginning, carrier = slack.bot_replies(CHANNEL, event["ts"])
    assert beginning["text"].startswith("This paragraph comes from the IO Intelligence emulator")
    assert "The whole answer is in answer.md." in shown(beginning) and has_footer(beginning)
    [file] = carrier["files"]
    assert file["name"] == "answer.md" and carrier["thread_ts"] == event["ts"]
    assert slack.file_body(file) == (await emulator_answer(client, VERY_LONG)).encode()

    [announced] = slack.calls_to("files.getUploadURLExternal")
    assert announced.args["filename"] == "answer.md" and int(announced.args["length"]) == file["size"]
    [upload] = slack.calls_to("upload")
    assert upload.token is None, "the bytes go to the upload URL without the bot token"
    [complete] = slack.calls_to("files.completeUploadExternal")
    assert (complete.args["channel_id"], complete.args["thread_ts"]) == (CHANNEL, event["ts"])


REFUSED_UPLOADS = [  # each of the three steps failing, and what the log says
    ("files.getUploadURLExternal", "json_error", "fatal_error"),
    ("upload", "html_502", "the file upload was refused"),
    ("files.completeUploadExternal", "drop", "the connection failed"),
]


@pytest.mark.parametrize("service", [6000], indirect=True)  # max_tokens: room for the answer
@pytest.mark.parametrize(("step", "fault", "said"), REFUSED_UPLOADS)
async def test_a_very_long_answer_whose_file_slack_refuses_is_posted_as_messages(bot, slack, caplog, step, fault, said):
    slack.fail(step, fault)
    event = bot.message(VERY_LONG)
    await bot.deliver(event)
    await slack.wait_for(lambda: slack.calls_to(step) and not bot.adapter.in_flight.busy)
    replies = slack.bot_replies(CHANNEL, event["ts"])

    assert len(replies) > 6 and [has_footer(reply) for reply in replies] == [False] * (len(replies) - 1) + [True]
    assert all("answer.md" not in shown(reply) for reply in replies)
    whole = "\n".join(reply["text"] for reply in replies)
    assert all(f"    total += {n}\n" in whole for n in range(1, 27)), "every part, in order"
    assert not any(reply.get("files") for reply in replies)
    assert f"could not upload an answer in C0GENERAL as a file ({said})" in caplog.text


@pytest.mark.parametrize("service", [6000], indirect=True)  # max_tokens: room for the answer
async def test_a_very_long_answer_to_the_slash_command_is_cut_not_uploaded(bot, slack):
    response, key = await bot.command(VERY_LONG)
    assert response.status_code == 200
    answers = await bot.responses(key)
    assert len(answers) == 5
    assert "was too long for one reply and was cut" in shown(answers[-1])
    assert slack.calls_to("files.getUploadURLExternal") == []


# --- Socket Mode ---------------------------------------------------------------------------------


async def test_socket_mode_serves_the_slash_command_and_skips_a_retried_event(service, slack, emulator):
    with pytest.raises(ValueError, match="signing secret"):
        SlackAdapter(
            service,
            bot_token=BOT_TOKEN,
            signing_secret=None,
            api_url=slack.api_url,
            file_hosts=["127.0.0.1"],
            image_limits=ImageLimits(),
            store=MemoryStore(),
        )
    adapter = SlackAdapter(
        service,
        bot_token=BOT_TOKEN,
        signing_secret=None,
        app_token=APP_TOKEN,
        api_url=slack.api_url,
        file_hosts=["127.0.0.1"],
        image_limits=ImageLimits(),
        store=MemoryStore(),
    )
    assert adapter.routes() == [], "Socket Mode serves no HTTP route"
    try:
        await adapter.start()
        [opened] = slack.calls_to("apps.connections.open")
        assert opened.token == APP_TOKEN
        command = command_fields("ask hello", user=ANA, response_url=slack.response_url("sm"), trigger_id="sm.1")
        envelope = await slack.send_envelope("slash_commands", command)
        await slack.wait_for(lambda: any(c.args.get("envelope_id") == envelope for c in slack.calls_to("socket_ack")))
        [answer] = await slack.wait_for(lambda: slack.responses("sm"))
        assert answer["response_type"] == "in_channel" and 'you asked "hello"' in shown(answer)

        event = {"type": "message", "channel": DM, "channel_type": "im", "user": ANA, "text": "hi", "ts": slack.next_ts()}
        payload = event_fields(event, event_id="Ev0SOCKET")
        await slack.send_envelope("events_api", payload)
        await slack.send_envelope("events_api", payload, retry_attempt=1)
        await slack.wait_for(lambda: len(slack.calls_to("socket_ack")) == 3)
        await slack.wait_for(lambda: len(chat_calls(emulator)) == 2)
        await asyncio.sleep(0.2)
        assert len(chat_calls(emulator)) == 2
    finally:
        await adapter.stop()


# --- the app manifest ----------------------------------------------------------------------------


def test_the_manifest_asks_for_what_the_adapter_uses():
    manifest = (Path(__file__).resolve().parents[1] / "slack-manifest.yml").read_text()
    listed = set(re.findall(r"^\s+- (\S+)", manifest, re.MULTILINE))
    scopes = {
        "commands",
        "app_mentions:read",
        "chat:write",
        "im:history",
        "channels:history",
        "groups:history",
        "mpim:history",
        "files:read",
        "files:write",
    }
    assert scopes | {"app_mention", "message.im", "message.channels"} <= listed
    assert "- command: /io" in manifest
    # The slash command, the events and the interactions (the message shortcuts) all come to one URL.
    assert len(re.findall(r"^\s+(?:url|request_url): https://YOUR-HOST/slack/events$", manifest, re.MULTILINE)) == 3
    assert "socket_mode_enabled: false" in manifest and "Socket Mode instead" in manifest


# --- rendering, without Slack --------------------------------------------------------------------


def test_markdown_becomes_mrkdwn_and_code_is_left_alone():
    markdown = "# Plan\n**Bold** and ~~old~~, see [docs](https://io.net/docs?a=1&b=2).\n- one\n* two\n```python\nx = a**2 < b\n```\nUse `**kwargs`."
    assert to_mrkdwn(markdown) == (
        "*Plan*\n*Bold* and ~old~, see docs (<https://io.net/docs?a=1&amp;b=2>).\n• one\n• two\n```\nx = a**2 &lt; b\n```\nUse `**kwargs`."
    )


def test_nothing_the_model_writes_can_become_a_mention():
    rendered = to_mrkdwn(
        "<!channel> <!here|here> <@U123> @everyone @Here [x](https://a.io|<!channel>)\n```\n@channel <!everyone>\n```"
    )
    assert not CROWD_PING.search(rendered)
    assert "<@U123>" not in rendered and "<!" not in rendered
    assert "@\u200beveryone" in rendered and "@\u200bHere" in rendered


def test_slack_text_is_read_back_as_plain_text():
    text = f"<@{BOT_USER_ID}> vision <https://example.com/cat.png> &lt;b&gt; &amp; <mailto:a@b.io|a@b.io> <mailto:c@d.io> <!here>"
    assert from_slack(text, BOT_USER_ID) == "vision https://example.com/cat.png <b> & a@b.io c@d.io @here"


def test_thread_messages_become_alternating_turns():
    messages = [
        {"user": ANA, "text": f"<@{BOT_USER_ID}> first", "ts": "1.0"},
        {"user": "U0BEA", "text": "me too", "ts": "2.0"},
        {"user": BOT_USER_ID, "bot_id": BOT_ID, "text": "answer &amp; more", "ts": "3.0"},
        {"user": BOT_USER_ID, "bot_id": BOT_ID, "text": PLACEHOLDER, "ts": "4.0"},
        {"bot_id": "B0OTHER", "subtype": "bot_message", "text": "beep", "ts": "5.0"},
        {"user": ANA, "subtype": "channel_join", "text": "joined", "ts": "6.0"},
        {"user": ANA, "text": "thanks", "ts": "7.0"},
    ]
    assert thread_turns(messages, BOT_USER_ID, BOT_ID) == [
        {"role": "user", "content": "first\n\nme too"},
        {"role": "assistant", "content": "answer & more"},
        {"role": "user", "content": "thanks"},
    ]
