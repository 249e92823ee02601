"""The Discord adapter end to end: the unmodified discord.py client against a stand-in Discord on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import re
from contextlib import asynccontextmanager

import discord
import httpx
import pytest

from adapters.discord import (
    COMMANDS_HASH_FILE,
    MESSAGE_LIMIT,
    DiscordAccess,
    DiscordAdapter,
    DiscordSettings,
    use_discord_at,
    with_subtext,
)
from core.adapter import AdapterError
from core.chunks import FENCE
from core.commands import COMMANDS
from core.images import ImageLimits
from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.service import Service, ServiceConfig
from core.settings import SettingsError, load_settings
from emulator import CODE_BLOCK

from .conftest import png_bytes
from .pdfs import encrypted, pdf_bytes
from .standins.discord import (
    ALICE,
    BOB,
    BOT_ID,
    DM_CHANNEL,
    EPHEMERAL,
    GENERAL,
    GUILD_ID,
    MEMBER_ROLE,
    OTHER_BOT,
    RANDOM,
    THREAD,
    TOKEN,
    DiscordStandIn,
)

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"
MENTION = f"<@{BOT_ID}>"


@pytest.fixture
async def standin():
    async with DiscordStandIn() as running:
        yield running


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def service(client, ledger, http, request):
    """The service behind the bot; a test that needs room for a longer answer passes its `max_tokens` (indirect)."""
    max_tokens = getattr(request, "param", 2048)
    config = ServiceConfig(model=MODEL, vision_model=VISION_MODEL, max_tokens=max_tokens, allow_loopback_images=True)
    return Service(client, ledger, load_quota_table(), config, http, store=MemoryStore())


@pytest.fixture
def make_adapter(service, standin, tmp_path):
    def make(access: DiscordAccess = DiscordAccess(), standin: DiscordStandIn = standin) -> DiscordAdapter:
        use_discord_at(standin.api_url, standin.gateway_url)
        return DiscordAdapter(
            service, token=TOKEN, access=access, image_limits=ImageLimits(), store=MemoryStore(), state_dir=tmp_path
        )

    return make


@asynccontextmanager
async def running(adapter: DiscordAdapter, standin: DiscordStandIn):
    """The adapter connected to the stand-in (its READY and GUILD_CREATE sent), stopped afterwards."""
    try:
        await asyncio.wait_for(adapter.start(), timeout=10)
        assert standin.ready.is_set(), "start() returned before the adapter was connected"
        yield adapter
    finally:
        await adapter.stop()
        await asyncio.wait_for(adapter.wait(), timeout=10)


@pytest.fixture
async def bot(make_adapter, standin):
    async with running(make_adapter(), standin) as adapter:
        yield adapter


def chat_calls(emulator) -> list:
    return [r for r in emulator.requests if r.path == "/chat/completions"]


async def answer_to(standin: DiscordStandIn, message: dict, *, done: str = "\n-# ") -> list[dict]:
    """The bot's messages answering `message` (the first replies to it, the rest to each other), once the
    last one shows `done` (by default the footer, which only the final edit carries)."""

    def pieces() -> list[dict] | None:
        found, parent = [], message
        while replies := [m for m in standin.replies_to(parent) if m["author"]["id"] == str(BOT_ID)]:
            parent = replies[0]
            found.append(parent)
        return found if found and done in found[-1]["content"] else None

    return await standin.wait_for(pieces)


def pings_nobody(body: dict) -> bool:
    mentions = body["allowed_mentions"]
    return mentions["parse"] == [] and not (mentions.get("users") or mentions.get("roles") or mentions.get("replied_user"))


def message_calls(standin: DiscordStandIn) -> list:
    return standin.calls_to("POST", r"/channels/\d+/messages") + standin.calls_to("PATCH", r"/channels/\d+/messages/\d+")


# --- messages --------------------------------------------------------------------------------------


async def test_a_mention_is_answered_in_a_reply_without_pings(bot, standin, emulator, ledger):
    question = await standin.post(f"{MENTION} What is io.net?", mention_bot=True)
    [answer] = await answer_to(standin, question)
    assert 'you asked "What is io.net?"' in answer["content"]  # the mention is not part of the question
    assert re.search(r"\n-# Llama-3\.3-70B-Instruct · \d+ tokens$", answer["content"])  # the model, as subtext
    assert chat_calls(emulator)[-1].body["messages"][-1] == {"role": "user", "content": "What is io.net?"}
    calls = [(c.method, c.path) for c in standin.calls]
    assert calls.index(("POST", f"/channels/{GENERAL}/typing")) < calls.index(("POST", f"/channels/{GENERAL}/messages"))
    assert all(pings_nobody(call.body) for call in message_calls(standin))
    [row] = await ledger.usage(user=f"discord:{ALICE}")
    assert row.requests == 1
    intents = discord.Intents.default()
    intents.message_content = True
    assert [identify["intents"] for identify in standin.identifies] == [intents.value]


async def test_a_dm_is_answered_without_a_mention(bot, standin):
    question = await standin.post("translate french Good morning", channel=DM_CHANNEL)
    [answer] = await answer_to(standin, question, done="**French:**")
    assert answer["channel_id"] == str(DM_CHANNEL)
    assert re.search(r"\n-# Llama-3\.3-70B-Instruct · ~[\d,]+ tokens \(estimated\)$", answer["content"])


async def test_a_reply_chain_of_three_turns_is_the_history(bot, standin, emulator):
    first = await standin.post(f"{MENTION} Name a colour", mention_bot=True)
    [first_answer] = await answer_to(standin, first)
    # Bob's own conversation in the same channel must not leak into Alice's.
    bobs = await standin.post(f"{MENTION} Bob's secret question", author=BOB, mention_bot=True)
    await answer_to(standin, bobs)
    second = await standin.post("And another one", reply_to=int(first_answer["id"]))  # a reply needs no mention
    [second_answer] = await answer_to(standin, second)
    third = await standin.post("Which was first?", reply_to=int(second_answer["id"]))
    await answer_to(standin, third)

    [*_, last] = [call for call in chat_calls(emulator) if call.body["messages"][-1]["content"] == "Which was first?"]
    sent = [(m["role"], m["content"]) for m in last.body["messages"][1:]]
    without_footer = [a["content"].split("\n-# ")[0] for a in (first_answer, second_answer)]
    assert sent == [
        ("user", "Name a colour"),
        ("assistant", without_footer[0]),
        ("user", "And another one"),
        ("assistant", without_footer[1]),
        ("user", "Which was first?"),
    ]
    assert "Bob" not in str(last.body["messages"])
    assert standin.calls_to("GET", r"/channels/\d+/messages/\d+") == []  # every turn came from the cache


async def test_a_chain_from_before_the_bot_connected_is_fetched(bot, standin, emulator):
    old = await standin.post("The deploy failed at 3am.", author=BOB, deliver=False)
    later = await standin.post("It was the database migration.", author=BOB, reply_to=int(old["id"]), deliver=False)
    question = await standin.post(f"{MENTION} What failed?", reply_to=int(later["id"]), mention_bot=True)
    await answer_to(standin, question)
    sent = [(m["role"], m["content"]) for m in chat_calls(emulator)[-1].body["messages"][1:]]
    # Turns in a row from the same side are one turn: some chat templates insist that roles alternate.
    assert sent == [("user", "The deploy failed at 3am.\n\nIt was the database migration."), ("user", "What failed?")]
    # `later` came inside the event; only `old` had to be fetched, once.
    assert [c.path for c in standin.calls_to("GET", r"/channels/\d+/messages/\d+")] == [
        f"/channels/{GENERAL}/messages/{old['id']}"
    ]


async def test_an_attached_image_goes_to_the_vision_model_as_a_data_url(bot, standin, emulator):
    image = standin.attachment("cat.png", png_bytes(), "image/png")
    song = standin.attachment("notes.mp3", b"ID3", "audio/mpeg")
    huge = standin.attachment("huge.png", png_bytes(), "image/png", size=30 * 1024 * 1024)
    question = await standin.post(f"{MENTION} What colour is it?", mention_bot=True, attachments=[image, song, huge])
    [answer] = await answer_to(standin, question)

    [call] = chat_calls(emulator)
    assert call.body["model"] == VISION_MODEL
    parts = call.body["messages"][-1]["content"]
    assert {"type": "text", "text": "What colour is it?"} in parts
    [url] = [part["image_url"]["url"] for part in parts if part["type"] == "image_url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == png_bytes()
    assert "PNG, 64x48 pixels" in answer["content"]
    assert "notes.mp3 is not an image" in answer["content"] and "huge.png is over the 20 MB limit" in answer["content"]
    # Only the image that passed the declared type and size checks was downloaded, with no credential.
    assert standin.downloads == [(f"/attachments/{image['id']}/cat.png", None)]


async def test_only_refused_images_are_explained_without_calling_the_api(bot, standin, emulator):
    fake = standin.attachment("cat.png", b"%PDF-1.4 not an image", "image/png")
    question = await standin.post(f"{MENTION} What is it?", mention_bot=True, attachments=[fake])
    [answer] = await answer_to(standin, question, done="cat.png")
    assert "not a JPEG, PNG, WEBP or GIF" in answer["content"]
    assert chat_calls(emulator) == []


REPORT = pdf_bytes(["Quarterly report", None, "Revenue grew by 12 percent."])


async def test_a_text_file_and_a_pdf_reach_the_model_as_text_and_are_charged(bot, standin, emulator, ledger):
    notes = standin.attachment("notes.md", b"# Plan\nShip on Friday.", "text/markdown; charset=utf-8")
    report = standin.attachment("report.pdf", REPORT, "application/pdf")
    question = await standin.post(f"{MENTION} What do these say?", mention_bot=True, attachments=[notes, report])
    [answer] = await answer_to(standin, question)

    [call] = chat_calls(emulator)
    assert call.body["model"] == MODEL
    assert call.body["messages"][-1]["content"] == (
        'What do these say?\n\n<file name="notes.md">\n# Plan\nShip on Friday.\n</file>\n\n'
        '<file name="report.pdf">\nQuarterly report\n\nRevenue grew by 12 percent.\n</file>'
    )
    [row] = await ledger.usage(user=f"discord:{ALICE}")
    assert row.requests == 1 and row.prompt_tokens > 0 and "-# Llama-3.3-70B-Instruct" in answer["content"]
    assert [path for path, _ in standin.downloads] == [
        f"/attachments/{notes['id']}/notes.md",
        f"/attachments/{report['id']}/report.pdf",
    ]


async def test_translate_with_a_file_alone_translates_the_file(bot, standin, emulator, ledger):
    notes = standin.attachment("greeting.txt", "Guten Morgen!".encode("utf-8-sig"), "text/plain")
    question = await standin.post(f"{MENTION} translate English", mention_bot=True, attachments=[notes])
    await answer_to(standin, question)
    [call] = [r for r in emulator.requests if r.path == "/workflows/run"]
    assert call.body["args"]["target_language"] == "English"
    assert call.body["text"] == '<file name="greeting.txt">\nGuten Morgen!\n</file>'
    assert await ledger.used_today(user=f"discord:{ALICE}") > 0


@pytest.mark.parametrize(
    ("name", "body", "content_type", "said"),
    [
        ("secret.pdf", encrypted(REPORT), "application/pdf", "secret.pdf is encrypted, so it could not be read"),
        ("scan.pdf", pdf_bytes([None]), "application/pdf", "scan.pdf has no text to read"),
        ("data.csv", "prix;café\n".encode("cp1252"), "text/csv", "data.csv is not UTF-8 text, so it was not read"),
        ("image.txt", png_bytes(), "text/plain", "image.txt is not a text file: it holds binary data."),
    ],
)
async def test_a_file_that_cannot_be_read_is_refused_saying_why_and_costs_nothing(
    bot, standin, emulator, ledger, name, body, content_type, said
):
    attachment = standin.attachment(name, body, content_type)
    question = await standin.post(f"{MENTION} summarize", mention_bot=True, attachments=[attachment])
    [answer] = await answer_to(standin, question, done=name)
    assert answer["content"].startswith(said)
    assert [r for r in emulator.requests if r.path in ("/chat/completions", "/workflows/run")] == []
    assert await ledger.usage(user=f"discord:{ALICE}") == [] and await ledger.reservations_in_flight() == 0


async def test_the_vision_slash_command_reads_an_attached_pdf_as_text(bot, standin, emulator):
    report = standin.attachment("report.pdf", REPORT, "application/pdf")
    interaction = await standin.invoke(
        "vision",
        [{"name": "image", "type": 11, "value": report["id"]}, {"name": "question", "type": 3, "value": "Did revenue grow?"}],
        resolved={"attachments": {report["id"]: report}},
    )
    await standin.wait_for(lambda: standin.calls_to("POST", rf"/webhooks/\d+/{interaction['token']}"))
    await standin.wait_for(lambda: "-# Llama-3.3-70B-Instruct" in standin.bot_messages()[-1]["content"])
    content = chat_calls(emulator)[-1].body["messages"][-1]["content"]
    assert content.startswith('Did revenue grow?\n\n<file name="report.pdf">') and "12 percent" in content


@pytest.mark.parametrize("size", [5000, 4000])  # at 4,000 the code block straddles the 2,000 mark
async def test_a_long_answer_is_split_into_messages_that_each_render(bot, standin, emulator, size):
    question = await standin.post(f"{MENTION} emulate:long={size}", mention_bot=True)
    pieces = await answer_to(standin, question)
    contents = [piece["content"] for piece in pieces]
    assert len(contents) == 3
    assert all(len(content) <= 2000 for content in contents)
    assert all(sum(1 for line in content.split("\n") if FENCE.match(line)) % 2 == 0 for content in contents)
    code_lines = [line for line in "\n".join(contents).split("\n") if "total +=" in line]
    assert code_lines == [line for line in CODE_BLOCK.split("\n") if "total +=" in line]  # all there, once, in order
    assert contents[-1].split("\n")[-1].startswith("-# Llama-3.3-70B-Instruct")
    # Streamed with throttled edits: a few REST calls, not one per streamed piece.
    assert len(message_calls(standin)) < 12

    # A reply to the last piece carries the whole answer as one turn of history, without the footer.
    follow_up = await standin.post("Thanks!", reply_to=int(pieces[-1]["id"]))
    await answer_to(standin, follow_up)
    history = chat_calls(emulator)[-1].body["messages"][1:]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert all(line in history[1]["content"] for line in CODE_BLOCK.split("\n")) and "-# " not in history[1]["content"]


async def test_everyone_in_model_output_is_sent_with_mentions_disabled(bot, standin):
    question = await standin.post(f"{MENTION} Please say @everyone and @here", mention_bot=True)
    [answer] = await answer_to(standin, question)
    assert "@everyone" in answer["content"]
    carrying = [call for call in message_calls(standin) if "@everyone" in call.body.get("content", "")]
    assert carrying and all(pings_nobody(call.body) for call in carrying)


async def test_an_over_budget_person_is_told_so(bot, standin, emulator, ledger):
    person = f"discord:{ALICE}"
    await ledger.set_user_limit(person, 1_000)
    reservation = await ledger.reserve(user=person, model=MODEL, tokens=0, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=900, completion_tokens=0, estimated=False)
    question = await standin.post(f"{MENTION} hello", mention_bot=True)
    [answer] = await answer_to(standin, question, done="00:00 UTC")
    assert "100 of your 1,000 tokens left" in answer["content"]
    assert chat_calls(emulator) == []


async def test_blocked_channels_and_bots_are_ignored(make_adapter, standin):
    access = DiscordAccess(blocked_channels=frozenset({RANDOM}))
    async with running(make_adapter(access), standin):
        await standin.post(f"{MENTION} in a blocked channel", channel=RANDOM, mention_bot=True)
        await standin.post(f"{MENTION} in a thread of a blocked channel", channel=THREAD, mention_bot=True)
        await standin.post(f"{MENTION} from another bot", author=OTHER_BOT, mention_bot=True)
        allowed = await standin.post(f"{MENTION} allowed", mention_bot=True)
        await answer_to(standin, allowed)
    assert [c for c in standin.calls if f"/channels/{RANDOM}/" in c.path or f"/channels/{THREAD}/" in c.path] == []
    assert len(standin.bot_messages(GENERAL)) == 1


async def test_dms_can_be_turned_off(make_adapter, standin):
    async with running(make_adapter(DiscordAccess(allow_dms=False)), standin):
        await standin.post("hello in a DM", channel=DM_CHANNEL)
        allowed = await standin.post(f"{MENTION} hello in the server", mention_bot=True)
        await answer_to(standin, allowed)
    assert standin.bot_messages(DM_CHANNEL) == []


async def test_a_dropped_gateway_resumes_without_losing_the_next_message(bot, standin):
    session = standin.sessions[0].session_id
    await standin.disconnect()
    question = await standin.post(f"{MENTION} still there?", mention_bot=True)  # sent while the bot is away
    await answer_to(standin, question)
    assert [resume["session_id"] for resume in standin.resumes] == [session]
    assert len(standin.identifies) == 1  # resumed, not a new session


async def test_a_replayed_message_is_answered_once_even_when_it_costs_nothing(bot, standin, emulator):
    question = await standin.post(f"{MENTION} help", mention_bot=True)  # free: the ledger never sees it
    await answer_to(standin, question, done="ask")
    await standin.dispatch("MESSAGE_CREATE", question)  # as after a resume that replays it
    replayed = await standin.post(f"{MENTION} What is io.net?", mention_bot=True)
    await answer_to(standin, replayed)
    assert len([m for m in standin.replies_to(question) if m["author"]["id"] == str(BOT_ID)]) == 1


async def test_closing_lets_an_answer_in_flight_be_posted(bot, standin, emulator):
    emulator.answer_delay = 0.5
    question = await standin.post(f"{MENTION} a slow one", mention_bot=True)
    await standin.wait_for(lambda: standin.calls_to("POST", rf"/channels/{GENERAL}/typing"))  # being answered
    await asyncio.wait_for(bot.stop(), timeout=10)
    assert "a slow one" in standin.replies_to(question)[0]["content"]


async def test_a_refused_message_content_intent_is_explained(make_adapter):
    async with DiscordStandIn(refuse_message_content=True) as refusing:
        adapter = make_adapter(standin=refusing)
        with pytest.raises(AdapterError, match="Message Content Intent"):
            await asyncio.wait_for(adapter.start(), timeout=10)
        await adapter.stop()


# --- slash commands --------------------------------------------------------------------------------


async def test_a_slash_command_is_deferred_then_followed_up(bot, standin):
    interaction = await standin.invoke(
        "translate", [{"name": "language", "type": 3, "value": "French"}, {"name": "text", "type": 3, "value": "Good morning"}]
    )
    followup = rf"/webhooks/\d+/{interaction['token']}"
    [call] = await standin.wait_for(lambda: standin.calls_to("POST", followup))
    assert "**French:**" in call.body["content"] and pings_nobody(call.body)
    assert not call.body.get("flags", 0) & EPHEMERAL
    [callback] = standin.calls_to("POST", rf"/interactions/{interaction['id']}/{interaction['token']}/callback")
    assert callback.body["type"] == 5 and callback.query == {"with_response": "1"}  # deferred at once
    assert standin.calls.index(callback) < standin.calls.index(call)
    # The deferred reply shows Discord's own "thinking"; no typing in a channel the bot may not be in.
    assert not standin.calls_to("POST", r"/channels/\d+/typing")


async def test_private_slash_answers_are_ephemeral(bot, standin, ledger):
    usage = await standin.invoke("usage")
    [call] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/webhooks/\d+/{usage['token']}"))
    [callback] = standin.calls_to("POST", rf"/interactions/{usage['id']}/.*")
    assert callback.body["data"]["flags"] == EPHEMERAL and call.body["flags"] == EPHEMERAL
    assert "Your use today" in call.body["content"]

    # A refusal of a public command replaces the public "thinking" message with an ephemeral one.
    await ledger.set_user_limit(f"discord:{ALICE}", 10)
    ask = await standin.invoke("ask", [{"name": "question", "type": 3, "value": "hello"}])
    [call] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/webhooks/\d+/{ask['token']}"))
    assert call.body["flags"] == EPHEMERAL and "daily budget of 10 tokens is too small" in call.body["content"]
    assert standin.calls_to("DELETE", rf"/webhooks/\d+/{ask['token']}/messages/@original")


async def test_the_vision_slash_command_takes_an_attachment(bot, standin, emulator):
    image = standin.attachment("cat.png", png_bytes(), "image/png")
    interaction = await standin.invoke(
        "vision",
        [{"name": "image", "type": 11, "value": image["id"]}, {"name": "question", "type": 3, "value": "Which colour?"}],
        resolved={"attachments": {image["id"]: image}},
    )
    [_] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/webhooks/\d+/{interaction['token']}"))
    await standin.wait_for(lambda: "-# Llama-3.2-90B-Vision-Instruct" in standin.bot_messages()[-1]["content"])
    parts = chat_calls(emulator)[-1].body["messages"][-1]["content"]
    assert {"type": "text", "text": "Which colour?"} in parts
    assert any(part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png") for part in parts)


async def test_slash_commands_are_synced_only_when_their_definition_changes(make_adapter, standin, tmp_path):
    sync = r"/applications/\d+/commands"
    async with running(make_adapter(), standin):
        pass
    [call] = standin.calls_to("PUT", sync)
    slash = {command["name"] for command in call.body if command["type"] == 1}
    menus = {command["name"] for command in call.body if command["type"] == 3}  # on messages
    assert slash == set(COMMANDS) and menus == {"Summarize", "Translate", "Ask iobot"}
    vision = next(command for command in call.body if command["name"] == "vision")
    assert {option["name"]: option["type"] for option in vision["options"]}["image"] == 11  # an attachment option

    async with running(make_adapter(), standin):  # a restart with the same commands
        pass
    assert len(standin.calls_to("PUT", sync)) == 1

    (tmp_path / COMMANDS_HASH_FILE).write_text("a different definition\n")
    async with running(make_adapter(), standin):
        pass
    assert len(standin.calls_to("PUT", sync)) == 2


# --- answers as files ------------------------------------------------------------------------------

VERY_LONG = "emulate:long=14000 tell me everything"  # over six messages of 2,000 characters


async def emulator_answer(client, question: str) -> str:
    """The emulator's answer to `question`, asked directly (its long answers are the same every time)."""
    return (await client.chat(MODEL, [{"role": "user", "content": question}], max_tokens=4000)).content


@pytest.mark.parametrize("service", [4000], indirect=True)  # max_tokens: room for the answer
async def test_a_very_long_answer_is_its_beginning_and_a_file_of_all_of_it_in_the_reply_chain(bot, standin, client):
    question = await standin.post(f"{MENTION} {VERY_LONG}", mention_bot=True)
    await standin.wait_for(lambda: any(call.files for call in message_calls(standin)))
    await standin.wait_for(lambda: not bot.in_flight.busy)
    beginning, carrier = await answer_to(standin, question, done="")

    assert beginning["content"].startswith("This paragraph comes from the IO Intelligence emulator")
    assert "\n-# The whole answer is in answer.md.\n-# Llama-3.3-70B-Instruct · " in beginning["content"]
    assert len(beginning["content"]) <= 2000
    [file] = carrier["attachments"]
    assert file["filename"] == "answer.md" and carrier["content"] == ""
    assert standin.attachment_bytes(file) == (await emulator_answer(client, VERY_LONG)).encode()
    [sent] = [call for call in message_calls(standin) if call.files]
    assert sent.files == [("answer.md", standin.attachment_bytes(file))] and pings_nobody(sent.body)


@pytest.mark.parametrize("service", [4000], indirect=True)  # max_tokens: room for the answer
async def test_a_very_long_answer_to_a_slash_command_comes_with_its_file_as_a_follow_up(bot, standin, client):
    interaction = await standin.invoke("ask", [{"name": "question", "type": 3, "value": VERY_LONG}])
    followups = rf"/webhooks/\d+/{interaction['token']}"
    await standin.wait_for(lambda: any(call.files for call in standin.calls_to("POST", followups)))
    await standin.wait_for(lambda: not bot.in_flight.busy)

    beginning, carrier = standin.bot_messages()
    assert "-# The whole answer is in answer.md." in beginning["content"]
    [file] = carrier["attachments"]
    assert file["filename"] == "answer.md" and carrier["webhook_id"]
    assert standin.attachment_bytes(file) == (await emulator_answer(client, VERY_LONG)).encode()


def test_notes_under_a_full_message_keep_it_within_the_limit_with_its_code_closed():
    full = "Here is the code:\n```python\n" + "x = 1\n" * 320 + "y = 2\n```"
    assert len(full) <= MESSAGE_LIMIT
    noted = with_subtext(with_subtext(full, "The whole answer is in answer.md."), "Llama-3.3-70B-Instruct · 812 tokens")
    assert len(noted) <= MESSAGE_LIMIT and noted.count("```") == 2, "cut, and its code block closed"
    assert noted.endswith("```\n-# The whole answer is in answer.md.\n-# Llama-3.3-70B-Instruct · 812 tokens")
    assert noted.startswith("Here is the code:\n```python\nx = 1\n")
    assert with_subtext("short", "a note") == "short\n-# a note", "a message with room is left whole"


# --- access rules ----------------------------------------------------------------------------------


def test_access_rules():
    everyone = DiscordAccess()
    assert everyone.permits(user=ALICE, guild=GUILD_ID, channels={GENERAL}) and everyone.permits(user=ALICE)

    rules = DiscordAccess(
        blocked_channels=frozenset({RANDOM}),
        allowed_roles=frozenset({MEMBER_ROLE}),
        blocked_users=frozenset({BOB}),
        allowed_users=frozenset({OTHER_BOT}),
    )
    assert rules.permits(user=ALICE, roles={MEMBER_ROLE}, guild=GUILD_ID, channels={GENERAL})
    assert not rules.permits(user=ALICE, roles=(), guild=GUILD_ID, channels={GENERAL}), "no allowed role"
    assert not rules.permits(user=ALICE, roles={MEMBER_ROLE}, guild=GUILD_ID, channels={RANDOM, 7}), "a blocked parent"
    assert not rules.permits(user=BOB, roles={MEMBER_ROLE}, guild=GUILD_ID, channels={GENERAL}), "a block wins"
    assert rules.permits(user=OTHER_BOT, guild=GUILD_ID, channels={GENERAL}), "allowed by user without the role"
    assert not rules.permits(user=ALICE), "in a DM roles are unknown, so only allowed users pass"
    assert rules.permits(user=OTHER_BOT)

    assert not DiscordAccess(allowed_guilds=frozenset({1})).permits(user=ALICE, guild=GUILD_ID, channels={GENERAL})
    assert not DiscordAccess(blocked_guilds=frozenset({GUILD_ID})).permits(user=ALICE, guild=GUILD_ID)
    assert not DiscordAccess(allowed_channels=frozenset({1})).permits(user=ALICE, guild=GUILD_ID, channels={GENERAL})
    assert not DiscordAccess(blocked_roles=frozenset({MEMBER_ROLE})).permits(user=ALICE, roles={MEMBER_ROLE}, guild=GUILD_ID)
    assert not DiscordAccess(allow_dms=False).permits(user=ALICE)


def test_access_comes_from_settings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DISCORD_BLOCKED_CHANNELS", f" {RANDOM}, 12 ,")
    monkeypatch.setenv("DISCORD_ALLOWED_ROLES", str(MEMBER_ROLE))
    monkeypatch.setenv("DISCORD_ALLOW_DMS", "false")
    access = DiscordAccess.from_settings(load_settings(DiscordSettings))
    assert access == DiscordAccess(
        blocked_channels=frozenset({RANDOM, 12}), allowed_roles=frozenset({MEMBER_ROLE}), allow_dms=False
    )
    monkeypatch.setenv("DISCORD_BLOCKED_USERS", "12,alice")
    with pytest.raises(SettingsError, match=re.escape("DISCORD_BLOCKED_USERS: must be a comma list of numeric Discord ids")):
        load_settings(DiscordSettings)
