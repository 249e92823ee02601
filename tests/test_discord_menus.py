"""Discord's message context menus, user installs and running without the Message Content intent, end to end:
the unmodified discord.py client against the stand-in Discord, the API served by the emulator."""

from __future__ import annotations

import json
import logging
import re

import discord
import httpx
import pytest

from adapters.discord import DiscordAccess, DiscordAdapter, DiscordSettings, build, use_discord_at
from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.service import Service, ServiceConfig
from core.settings import Settings, SettingsError, load_settings

from .conftest import png_bytes
from .standins.discord import (
    ALICE,
    BOB,
    BOT_ID,
    DM_CHANNEL,
    EPHEMERAL,
    FOREIGN_CHANNEL,
    FOREIGN_GUILD,
    GENERAL,
    GROUP_DM,
    MESSAGE_CONTENT_INTENT,
    TOKEN,
    DiscordStandIn,
)
from .test_discord import answer_to, chat_calls, pings_nobody, running

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"
MENTION = f"<@{BOT_ID}>"
LANGUAGE = "Portuguese"  # the service's default language in these tests, so that it is seen to be used
BOBS_TEXT = "The release moves to Thursday because the database migration needs another review."


@pytest.fixture
async def standin():
    async with DiscordStandIn() as running_standin:
        yield running_standin


@pytest.fixture
async def service(client, ledger):
    config = ServiceConfig(model=MODEL, vision_model=VISION_MODEL, allow_loopback_images=True, default_language=LANGUAGE)
    async with httpx.AsyncClient() as http:
        yield Service(client, ledger, load_quota_table(), config, http, store=MemoryStore())


@pytest.fixture
def make_adapter(service, standin, tmp_path):
    def make(*, message_content: bool = True, access: DiscordAccess = DiscordAccess()) -> DiscordAdapter:
        use_discord_at(standin.api_url, standin.gateway_url)
        return DiscordAdapter(
            service,
            token=TOKEN,
            access=access,
            image_limits=service.config.image_limits,
            store=MemoryStore(),
            state_dir=tmp_path,
            message_content=message_content,
        )

    return make


@pytest.fixture
async def bot(make_adapter, standin):
    async with running(make_adapter(), standin) as adapter:
        yield adapter


def api_calls(emulator) -> list:
    return [r for r in emulator.requests if r.path in ("/chat/completions", "/workflows/run")]


async def followups(standin: DiscordStandIn, interaction: dict, *, done: str = "\n-# ") -> list:
    """The follow-ups answering `interaction`, once one shows `done` (by default the model's footer, in the last edit)."""
    token = interaction["token"]

    def answered() -> list | None:
        posted = standin.calls_to("POST", rf"/webhooks/\d+/{token}")
        edits = standin.calls_to("PATCH", rf"/webhooks/\d+/{token}/messages/\d+")
        return posted if any(done in (call.body or {}).get("content", "") for call in posted + edits) else None

    return await standin.wait_for(answered)


def channel_calls(standin: DiscordStandIn) -> list:
    """What the bot did in channels itself rather than through an interaction: posts, edits, typing."""
    return [call for call in standin.calls if call.path.startswith("/channels/")]


# --- context menus ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("menu", "shown"),
    [("Summarize", "Key points"), ("Translate", f"**{LANGUAGE}:**"), ("Ask iobot", "you asked")],
)
async def test_each_menu_answers_the_message_in_a_follow_up_charged_to_whoever_used_it(
    bot, standin, emulator, ledger, menu, shown
):
    target = await standin.post(BOBS_TEXT, author=BOB)  # no mention: the bot lets it be
    interaction = await standin.invoke_menu(menu, target, author=ALICE)
    [*_, last] = await followups(standin, interaction)
    [callback] = standin.calls_to("POST", rf"/interactions/{interaction['id']}/{interaction['token']}/callback")
    assert callback.body["type"] == 5 and not callback.body.get("data", {}).get("flags", 0) & EPHEMERAL  # deferred at once
    assert standin.calls.index(callback) < standin.calls.index(last)
    content = standin.bot_messages()[-1]["content"]
    assert shown in content and pings_nobody(last.body) and not last.body.get("flags", 0) & EPHEMERAL

    [call] = api_calls(emulator)  # the message's text is what the API worked on
    assert BOBS_TEXT in json.dumps(call.body)
    if menu == "Translate":
        assert call.body["args"] == {"type": "translate_text", "target_language": LANGUAGE}
    if menu == "Ask iobot":
        assert call.body["messages"][-1] == {"role": "user", "content": BOBS_TEXT}
    [row] = await ledger.usage()
    assert row.user == f"discord:{ALICE}" and row.requests == 1  # whoever used the menu, not the author
    assert channel_calls(standin) == []  # the answer is the interaction's: nothing posted, no typing


async def test_a_menu_on_the_bots_own_answer_reads_it_without_its_footer(bot, standin, emulator):
    question = await standin.post(f"{MENTION} What is io.net?", mention_bot=True)
    [answer] = await answer_to(standin, question)
    interaction = await standin.invoke_menu("Summarize", answer)
    await followups(standin, interaction)
    summarized = json.dumps(api_calls(emulator)[-1].body)
    assert "you asked" in summarized and "-# " not in summarized and "tokens" not in summarized


async def test_ask_iobot_on_a_message_with_an_image_asks_the_vision_model(bot, standin, emulator):
    image = standin.attachment("cat.png", png_bytes(), "image/png")
    target = await standin.post("What colour is this cat?", author=BOB, attachments=[image])
    interaction = await standin.invoke_menu("Ask iobot", target)
    await followups(standin, interaction)
    [call] = chat_calls(emulator)
    assert call.body["model"] == VISION_MODEL
    parts = call.body["messages"][-1]["content"]
    assert {"type": "text", "text": "What colour is this cat?"} in parts
    assert any(part["type"] == "image_url" for part in parts)


async def test_a_menu_on_a_message_without_text_is_refused_privately_for_free(bot, standin, emulator):
    notes = standin.attachment("notes.pdf", b"%PDF-1.4", "application/pdf")
    target = await standin.post("", author=BOB, attachments=[notes])
    interaction = await standin.invoke_menu("Summarize", target)
    [callback] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/interactions/{interaction['id']}/.*"))
    assert callback.body["type"] == 4 and callback.body["data"]["flags"] == EPHEMERAL
    assert callback.body["data"]["content"] == "That message has no text to summarize."
    assert api_calls(emulator) == []


async def test_a_refusal_from_a_menu_is_private(bot, standin, ledger):
    await ledger.set_user_limit(f"discord:{ALICE}", 10)
    target = await standin.post(BOBS_TEXT, author=BOB)
    interaction = await standin.invoke_menu("Ask iobot", target)
    [call] = await followups(standin, interaction, done="too small")
    assert call.body["flags"] == EPHEMERAL  # the public "thinking" message is replaced by a private one
    assert standin.calls_to("DELETE", rf"/webhooks/\d+/{interaction['token']}/messages/@original")


async def test_who_may_not_use_the_bot_is_told_so_privately_by_a_menu(make_adapter, standin, emulator):
    async with running(make_adapter(access=DiscordAccess(blocked_users=frozenset({ALICE}))), standin):
        target = await standin.post(BOBS_TEXT, author=BOB)
        interaction = await standin.invoke_menu("Translate", target)
        [callback] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/interactions/{interaction['id']}/.*"))
    assert callback.body["data"]["flags"] == EPHEMERAL and "not allowed" in callback.body["data"]["content"]
    assert api_calls(emulator) == []


# --- installs to servers and to people -------------------------------------------------------------


async def test_every_application_command_installs_to_servers_and_people_and_works_everywhere(bot, standin):
    [sync] = standin.calls_to("PUT", r"/applications/\d+/commands")
    assert all(command["integration_types"] == [0, 1] and command["contexts"] == [0, 1, 2] for command in sync.body)
    menus = [command for command in sync.body if command["type"] == 3]  # message context menus
    assert [menu["name"] for menu in menus] == ["Summarize", "Translate", "Ask iobot"]
    assert all("options" not in menu and "description" not in menu for menu in menus)


async def test_a_user_install_in_a_server_without_the_bot_answers_only_through_the_interaction(bot, standin, emulator, ledger):
    target = await standin.post(BOBS_TEXT, author=BOB, channel=FOREIGN_CHANNEL, deliver=False)  # never seen by the bot
    interaction = await standin.invoke_menu("Summarize", target, author=ALICE, user_install=True)
    assert interaction["authorizing_integration_owners"] == {"1": str(ALICE)} and interaction["guild_id"] == str(FOREIGN_GUILD)
    await followups(standin, interaction)
    question = [{"name": "question", "type": 3, "value": "What is io.net?"}]
    ask = await standin.invoke("ask", question, channel=FOREIGN_CHANNEL, user_install=True)
    await followups(standin, ask)

    assert "Key points" in standin.bot_messages(FOREIGN_CHANNEL)[0]["content"]
    assert 'you asked "What is io.net?"' in standin.bot_messages(FOREIGN_CHANNEL)[-1]["content"]
    assert channel_calls(standin) == []  # no channel posts, no typing: Discord refuses both there
    [row] = await ledger.usage()
    assert row.user == f"discord:{ALICE}" and row.requests == 2


async def test_a_user_install_works_in_a_group_dm_without_the_bot(bot, standin, emulator):
    target = await standin.post("Bom dia a todos!", author=BOB, channel=GROUP_DM, deliver=False)
    interaction = await standin.invoke_menu("Translate", target, author=ALICE, user_install=True)
    assert interaction["context"] == 2  # a DM that is not the bot's
    await followups(standin, interaction)
    assert f"**{LANGUAGE}:**" in standin.bot_messages(GROUP_DM)[0]["content"]
    assert "Bom dia a todos!" in json.dumps(api_calls(emulator)[-1].body)
    assert channel_calls(standin) == []


# --- without the Message Content intent ------------------------------------------------------------


async def test_without_message_content_mentions_dms_menus_and_reply_chains_still_work(make_adapter, standin, emulator, caplog):
    caplog.set_level(logging.INFO, logger="iobot.discord")
    async with running(make_adapter(message_content=False), standin):
        [identify] = standin.identifies
        assert not identify["intents"] & MESSAGE_CONTENT_INTENT
        assert identify["intents"] == discord.Intents.default().value & ~MESSAGE_CONTENT_INTENT

        mention = await standin.post(f"{MENTION} What is io.net?", mention_bot=True)
        [answer] = await answer_to(standin, mention)
        assert 'you asked "What is io.net?"' in answer["content"]
        dm = await standin.post("ask What is a GPU?", channel=DM_CHANNEL)
        await answer_to(standin, dm)

        # Bob's message reaches the bot without its text: left out of the chain, and said so once in the log.
        old = await standin.post("The deploy failed at 3am.", author=BOB, deliver=False)
        question = await standin.post(f"{MENTION} What failed?", reply_to=int(old["id"]), mention_bot=True)
        await answer_to(standin, question)
        assert [m["content"] for m in chat_calls(emulator)[-1].body["messages"][1:]] == ["What failed?"]

        # A reply to the bot without a mention comes without text: it is asked for a mention, for free.
        unread = await standin.post("And the one before?", reply_to=int(answer["id"]))
        [hint] = await answer_to(standin, unread, done="Mention me")
        assert pings_nobody(standin.calls_to("POST", rf"/channels/{GENERAL}/messages")[-1].body)
        assert len(chat_calls(emulator)) == 3

        # A context menu brings the message's text with it, intent or not.
        interaction = await standin.invoke_menu("Ask iobot", old)
        await followups(standin, interaction)
        assert chat_calls(emulator)[-1].body["messages"][-1] == {"role": "user", "content": "The deploy failed at 3am."}
    notes = [record.message for record in caplog.records if "DISCORD_MESSAGE_CONTENT is false" in record.message]
    assert len(notes) == 1 and hint["content"] == "Mention me in your reply so that I can read it."


async def test_with_message_content_a_reply_chain_keeps_every_message(bot, standin, emulator):
    old = await standin.post("The deploy failed at 3am.", author=BOB, deliver=False)
    question = await standin.post(f"{MENTION} What failed?", reply_to=int(old["id"]), mention_bot=True)
    await answer_to(standin, question)
    sent = [m["content"] for m in chat_calls(emulator)[-1].body["messages"][1:]]
    assert sent == ["The deploy failed at 3am.", "What failed?"]
    assert standin.identifies[0]["intents"] & MESSAGE_CONTENT_INTENT


# --- settings --------------------------------------------------------------------------------------


def test_the_settings_read_the_message_content_intent_and_the_default_language(monkeypatch, tmp_path, service):
    monkeypatch.chdir(tmp_path)  # no stray .env
    assert load_settings(DiscordSettings).message_content is True
    assert load_settings(Settings).default_language == "English"
    monkeypatch.setenv("DISCORD_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("DISCORD_MESSAGE_CONTENT", "false")
    monkeypatch.setenv("IOBOT_DEFAULT_LANGUAGE", "Simplified Chinese")
    adapter = build(load_settings(DiscordSettings), service, state_dir=tmp_path)
    assert adapter.client.intents.message_content is False
    assert load_settings(Settings).default_language == "Simplified Chinese"
    monkeypatch.setenv("IOBOT_DEFAULT_LANGUAGE", "42")
    with pytest.raises(SettingsError, match=re.escape("IOBOT_DEFAULT_LANGUAGE: `42` is not a language name.")):
        load_settings(Settings)
    monkeypatch.setenv("IOBOT_DEFAULT_LANGUAGE", "")
    with pytest.raises(SettingsError, match=re.escape("IOBOT_DEFAULT_LANGUAGE: String should have at least 1 character")):
        load_settings(Settings)
