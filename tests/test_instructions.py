"""A channel's standing instructions: shown to anyone, changed by admins alone, announced, and sent to
the API as a system message, through the service, the console, Slack (the real Bolt app) and Discord
(the unmodified discord.py client)."""

from __future__ import annotations

import io

import httpx
import pytest

from adapters.console import CHANNEL as CONSOLE_CHANNEL
from adapters.console import ConsoleAdapter
from core.client import Message
from core.commands import MAX_INSTRUCTIONS_CHARS, Command, UsageError, parse_command
from core.errors import Outcome
from core.quotas import load_quota_table
from core.service import INSTRUCTIONS_SETTING, SYSTEM_PROMPT, Request, Service, ServiceConfig
from core.tokens import estimate_message_tokens, fit

from .conftest import png_bytes
from .standins.discord import ALICE, BOB, BOT_ID, EPHEMERAL, GENERAL, RANDOM, THREAD, DiscordStandIn
from .test_discord import answer_to, make_adapter, running, standin  # noqa: F401  (the Discord tests' fixtures)
from .test_slack import ANA, CHANNEL, shown, slack, start_bot  # noqa: F401  (the Slack tests' fixtures)
from .test_slack import TEAM_ID as SLACK_TEAM

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION = "meta-llama/Llama-3.2-90B-Vision-Instruct"
ADMIN = "console:ana"
HERE = "console"
ELSEWHERE = "slack:T1:C2"
PIRATE = "Answer like a pirate.\nKeep it to two sentences."
BEA = "U0BEA"  # a Slack member who is no admin
SYSTEM: Message = {"role": "system", "content": SYSTEM_PROMPT}


@pytest.fixture
def service(client, ledger) -> Service:
    """The service on the ledger's SQLite file; its admins: ana on the console, Slack and Discord."""
    admins = frozenset({ADMIN, f"slack:{SLACK_TEAM}:{ANA}", f"discord:{ALICE}"})
    config = ServiceConfig(model=MODEL, vision_model=VISION, max_tokens=256, admins=admins, allow_loopback_images=True)
    return Service(client, ledger, load_quota_table(), config, httpx.AsyncClient(), store=ledger.store)


def chat_calls(emulator) -> list:
    return [r for r in emulator.requests if r.path == "/chat/completions"]


async def say(service: Service, text: str, *, user: str = ADMIN, channel: str | None = HERE, display_name: str = "Ana", **more):
    return await service.handle(Request(user=user, text=text, channel=channel, display_name=display_name, **more))


# --- the grammar -------------------------------------------------------------------------------------


def test_instructions_take_any_text_up_to_a_bound():
    assert parse_command("instructions") == Command("instructions")
    assert parse_command(f"Instructions {PIRATE}") == Command("instructions", text=PIRATE)
    assert parse_command("instructions clear") == Command("instructions", text="clear")
    with pytest.raises(UsageError, match=f"Instructions are at most {MAX_INSTRUCTIONS_CHARS:,} characters"):
        parse_command("instructions " + "x" * (MAX_INSTRUCTIONS_CHARS + 1))


# --- the service ---------------------------------------------------------------------------------------


async def test_an_admin_sets_them_the_channel_is_told_and_questions_there_carry_them(service, emulator, ledger):
    assert (await say(service, "instructions")).text == "This channel has no standing instructions."

    changed = await say(service, f"instructions {PIRATE}")
    assert changed.outcome is Outcome.OK and not changed.private  # said in the channel
    assert changed.text == (
        "`Ana` changed this channel's standing instructions. From now on, answers here follow:\n"
        "> Answer like a pirate.\n> Keep it to two sentences."
    )
    assert emulator.requests == [] and await ledger.usage() == []  # free: no API call, no charge

    shown_now = await say(service, "instructions", user="console:bea", display_name="Bea")
    assert shown_now.private and shown_now.text.endswith("> Answer like a pirate.\n> Keep it to two sentences.")

    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Ahoy"}]
    await say(service, "What is io.net?", user="console:bea", history=history)
    assert chat_calls(emulator)[-1].body["messages"] == [
        SYSTEM,
        {"role": "system", "content": PIRATE},
        *history,
        {"role": "user", "content": "What is io.net?"},
    ]
    await say(service, "What is io.net?", channel=ELSEWHERE)  # another channel: none
    assert chat_calls(emulator)[-1].body["messages"][:2] == [SYSTEM, {"role": "user", "content": "What is io.net?"}]

    cleared = await say(service, "instructions CLEAR")
    assert cleared.text == "`Ana` cleared this channel's standing instructions." and not cleared.private
    assert await ledger.store.setting(HERE, INSTRUCTIONS_SETTING) is None
    await say(service, "What is io.net?")
    assert chat_calls(emulator)[-1].body["messages"][0] == SYSTEM and len(chat_calls(emulator)[-1].body["messages"]) == 2


@pytest.mark.parametrize("line", [f"instructions {PIRATE}", "instructions clear"])
async def test_someone_who_is_no_admin_is_refused(service, emulator, ledger, line):
    await ledger.store.set_setting(HERE, INSTRUCTIONS_SETTING, "Be brief.")
    reply = await say(service, line, user="console:bea", display_name="Bea")
    assert reply.outcome is Outcome.REFUSED and reply.private
    assert reply.text == "Only iobot's admins may change this channel's instructions; `instructions` shows them."
    assert await ledger.store.setting(HERE, INSTRUCTIONS_SETTING) == "Be brief."
    assert emulator.requests == []


async def test_a_request_from_no_channel_has_no_instructions(service):
    reply = await say(service, "instructions Be brief.", channel=None)
    assert reply.outcome is Outcome.REFUSED and "belong to a channel" in reply.text


async def test_the_instructions_count_in_the_tokens_reserved(service, ledger, emulator, monkeypatch):
    reserved: list[int] = []
    reserve = ledger.reserve

    async def recording(**arguments):
        reserved.append(arguments["tokens"])
        return await reserve(**arguments)

    monkeypatch.setattr(ledger, "reserve", recording)
    await say(service, "What is io.net?")
    await say(service, f"instructions {PIRATE}")
    await say(service, "What is io.net?")
    without, with_them = reserved
    assert with_them - without == estimate_message_tokens([{"role": "system", "content": PIRATE}]) > 0


def test_the_instructions_stay_when_a_long_conversation_is_cut():
    system: list[Message] = [SYSTEM, {"role": "system", "content": PIRATE}]
    history: list[Message] = [
        {"role": "user" if n % 2 == 0 else "assistant", "content": f"turn {n} " + "word " * 50} for n in range(40)
    ]
    newest: Message = {"role": "user", "content": "And now?"}
    room = estimate_message_tokens([*system, *history[-4:], newest]) + 256
    fitted = fit([*system, *history, newest], room, max_tokens=256, min_answer=64)
    assert fitted.messages[:2] == system and fitted.messages[-1] == newest
    assert 0 < fitted.dropped < len(history)  # older turns went, the instructions did not


async def test_images_asked_about_in_the_channel_carry_them_too(service, emulator, ledger):
    await ledger.store.set_setting(HERE, INSTRUCTIONS_SETTING, PIRATE)
    reply = await say(service, "What colour?", images=[("cat.png", png_bytes())])
    assert reply.outcome is Outcome.OK and reply.model == VISION
    assert chat_calls(emulator)[-1].body["messages"][1] == {"role": "system", "content": PIRATE}


# --- the console ---------------------------------------------------------------------------------------


async def test_the_console_is_a_channel_an_admin_instructs(service, emulator, ledger):
    stdout = io.StringIO()
    lines = io.StringIO("instructions Be brief.\nWhat is io.net?\n")
    await ConsoleAdapter(service, "ana", stdin=lines, stdout=stdout).run()
    assert "`ana` changed this channel's standing instructions." in stdout.getvalue()  # named by login
    assert chat_calls(emulator)[-1].body["messages"][1] == {"role": "system", "content": "Be brief."}
    assert await ledger.store.setting(CONSOLE_CHANNEL, INSTRUCTIONS_SETTING) == "Be brief."


# --- Slack: a mention in a channel, then questions there --------------------------------------------------


async def test_slack_admin_instructs_a_channel_others_are_refused_and_questions_carry_them(start_bot, slack, emulator, ledger):  # noqa: F811
    bot = await start_bot()
    change = {**bot.message(f"instructions {PIRATE}"), "user_profile": {"display_name": "Ana", "real_name": "Ana Lima"}}
    await bot.deliver(change)
    announced = await slack.wait_for(lambda: [m for m in slack.bot_replies(CHANNEL, change["ts"]) if "changed" in m["text"]])
    assert "`Ana` changed this channel's standing instructions" in shown(announced[-1])
    assert await ledger.store.setting(f"slack:{SLACK_TEAM}:{CHANNEL}", INSTRUCTIONS_SETTING) == PIRATE

    refused = bot.message("instructions Be rude.", user=BEA)
    await bot.deliver(refused)
    [private] = await slack.wait_for(lambda: slack.calls_to("chat.postEphemeral"))
    assert private.args["user"] == BEA and "Only iobot's admins may change" in shown(private.args)
    assert await ledger.store.setting(f"slack:{SLACK_TEAM}:{CHANNEL}", INSTRUCTIONS_SETTING) == PIRATE

    question = bot.message("What is io.net?", user=BEA)
    await bot.deliver(question)
    await bot.answer(question)
    assert chat_calls(emulator)[-1].body["messages"][1] == {"role": "system", "content": PIRATE}

    _, key = await bot.command("instructions", user=BEA)  # the slash command, in the same channel
    [listed] = await bot.responses(key)
    assert listed["response_type"] == "ephemeral" and "Keep it to two sentences." in shown(listed)


async def test_slack_slash_command_change_is_announced_in_the_channel_by_name(start_bot, emulator):  # noqa: F811
    bot = await start_bot()
    _, key = await bot.command("instructions clear")
    [announced] = await bot.responses(key)
    assert announced["response_type"] == "in_channel"
    assert "`u0ana` cleared this channel's standing instructions." in shown(announced)
    assert emulator.requests == []


# --- Discord: /instructions, then a mention -------------------------------------------------------------


async def test_discord_admin_instructs_a_channel_others_are_refused_and_mentions_carry_them(
    make_adapter,  # noqa: F811
    standin: DiscordStandIn,  # noqa: F811
    emulator,
    ledger,
):
    async with running(make_adapter(), standin):
        changed = await standin.invoke("instructions", [{"name": "text", "type": 3, "value": PIRATE}])
        [call] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/webhooks/\d+/{changed['token']}"))
        assert not call.body.get("flags", 0) & EPHEMERAL  # in the channel, for everyone
        assert "changed this channel's standing instructions" in call.body["content"]
        assert await ledger.store.setting(f"discord:{GENERAL}", INSTRUCTIONS_SETTING) == PIRATE

        refused = await standin.invoke("instructions", [{"name": "text", "type": 3, "value": "Be rude."}], author=BOB)
        [call] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/webhooks/\d+/{refused['token']}"))
        assert call.body["flags"] == EPHEMERAL and "Only iobot's admins may change" in call.body["content"]

        question = await standin.post(f"<@{BOT_ID}> What is io.net?", author=BOB, mention_bot=True)
        await answer_to(standin, question)
        assert chat_calls(emulator)[-1].body["messages"][1] == {"role": "system", "content": PIRATE}

        # A thread shares its parent channel's instructions; RANDOM has none.
        await ledger.store.set_setting(f"discord:{RANDOM}", INSTRUCTIONS_SETTING, "Be brief.")
        in_thread = await standin.post(f"<@{BOT_ID}> And now?", channel=THREAD, mention_bot=True)
        await answer_to(standin, in_thread)
        assert chat_calls(emulator)[-1].body["messages"][1] == {"role": "system", "content": "Be brief."}
