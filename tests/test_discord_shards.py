"""Discord sharding end to end: discord.py's AutoShardedClient against a stand-in Discord split into shards.

Two adapters each running one shard of two stand for two processes sharing the bot's servers: each
server's messages reach the adapter running its shard, DMs reach the one running shard 0.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sqlite3
import subprocess
from contextlib import asynccontextmanager
from typing import Any

import discord
import httpx
import pytest

from adapters.discord import DiscordAccess, DiscordAdapter, DiscordSettings, Shards, build, use_discord_at
from bots import checks
from core.adapter import AdapterError
from core.images import ImageLimits
from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.service import Service, ServiceConfig
from core.settings import SettingsError, load_settings

from .processes import IOBOT, discord_environment
from .standins.discord import (
    ALICE,
    BOB,
    BOT_ID,
    DM_CHANNEL,
    GENERAL,
    GUILD_ID,
    SECOND_GENERAL,
    SECOND_GUILD,
    TOKEN,
    DiscordStandIn,
    shard_of,
)

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
MENTION = f"<@{BOT_ID}>"


@pytest.fixture
async def standin():
    async with DiscordStandIn(shard_count=2) as running_standin:
        yield running_standin


@pytest.fixture
async def service(client, ledger):
    async with httpx.AsyncClient() as http:
        config = ServiceConfig(model=MODEL, vision_model=MODEL, max_tokens=512)
        yield Service(client, ledger, load_quota_table(), config, http, store=MemoryStore())


@pytest.fixture
def make_adapter(service, standin, tmp_path):
    def make(shards: Shards, standin: DiscordStandIn = standin, *, message_content: bool = True) -> DiscordAdapter:
        use_discord_at(standin.api_url, standin.gateway_url)
        return DiscordAdapter(
            service,
            token=TOKEN,
            access=DiscordAccess(),
            image_limits=ImageLimits(),
            store=MemoryStore(),
            state_dir=tmp_path,
            message_content=message_content,
            shards=shards,
        )

    return make


@asynccontextmanager
async def running(*adapters: DiscordAdapter):
    """The adapters connected at once, as processes started together would be; stopped afterwards."""
    try:
        await asyncio.wait_for(asyncio.gather(*(adapter.start() for adapter in adapters)), timeout=30)
        yield adapters
    finally:
        for adapter in adapters:
            await adapter.stop()
            await asyncio.wait_for(adapter.wait(), timeout=10)


async def answered(standin: DiscordStandIn, question: dict[str, Any]) -> dict[str, Any]:
    """The bot's one reply to `question`, once its last edit (the one with the footer) is in."""

    def replies() -> list[dict[str, Any]] | None:
        found = [m for m in standin.replies_to(question) if m["author"]["id"] == str(BOT_ID)]
        return found if found and "\n-# " in found[-1]["content"] else None

    [answer] = await standin.wait_for(replies)
    return answer


def received(adapter: DiscordAdapter, message: dict[str, Any]) -> bool:
    """Whether this adapter's client got `message` over its gateway (it caches what it receives)."""
    return any(cached.id == int(message["id"]) for cached in adapter.client.cached_messages)


async def settled(*adapters: DiscordAdapter) -> None:
    """Wait until no adapter is still posting an answer, so that a second answer would be in by now."""
    async with asyncio.timeout(10):
        while any(adapter.in_flight.busy for adapter in adapters):
            await asyncio.sleep(0.02)


# --- two processes' worth of shards ----------------------------------------------------------------


def test_the_stand_in_world_has_a_server_on_each_of_two_shards():
    assert shard_of(GUILD_ID, 2) == 0 and shard_of(SECOND_GUILD, 2) == 1 and shard_of(None, 2) == 0


async def test_each_server_is_answered_once_by_the_adapter_running_its_shard(make_adapter, standin, ledger, caplog):
    caplog.set_level(logging.INFO, logger="iobot.discord")
    first, second = make_adapter(Shards(2, (0,))), make_adapter(Shards(2, (1,)))
    async with running(first, second):
        assert standin.ready.is_set(), "both shards connected"
        assert sorted(identify["shard"] for identify in standin.identifies) == [[0, 2], [1, 2]]
        assert [guild.id for guild in first.client.guilds] == [GUILD_ID]
        assert [guild.id for guild in second.client.guilds] == [SECOND_GUILD]

        in_first = await standin.post(f"{MENTION} What is io.net?", mention_bot=True, channel=GENERAL, author=ALICE)
        in_second = await standin.post(f"{MENTION} What is a shard?", mention_bot=True, channel=SECOND_GENERAL, author=BOB)
        first_answer, second_answer = await answered(standin, in_first), await answered(standin, in_second)
        await settled(first, second)

    assert 'you asked "What is io.net?"' in first_answer["content"]
    assert 'you asked "What is a shard?"' in second_answer["content"]
    assert second_answer["channel_id"] == str(SECOND_GENERAL)
    assert len(standin.replies_to(in_first)) == len(standin.replies_to(in_second)) == 1
    assert standin.shards_sent("MESSAGE_CREATE", in_first) == [0]
    assert standin.shards_sent("MESSAGE_CREATE", in_second) == [1]
    assert received(first, in_first) and not received(second, in_first)
    assert received(second, in_second) and not received(first, in_second)
    for person in (ALICE, BOB):
        [row] = await ledger.usage(user=f"discord:{person}")
        assert row.requests == 1

    # The log says which shards each process runs, and that DMs do not come to the one without shard 0.
    logged = [record.getMessage() for record in caplog.records]
    assert any(line.endswith("in 1 servers, running shard 0 of 2") for line in logged)
    assert any(line.endswith("in 1 servers, running shard 1 of 2") for line in logged)
    assert [line for line in logged if "does not run Discord shard 0" in line] == [
        "this process does not run Discord shard 0: DMs to the bot reach only the process that does"
    ]


async def test_a_slash_command_in_a_server_is_answered_through_the_shard_it_came_on(make_adapter, standin, ledger):
    first, second = make_adapter(Shards(2, (0,))), make_adapter(Shards(2, (1,)))
    async with running(first, second):
        options = [{"name": "question", "type": 3, "value": "What is a shard?"}]
        interaction = await standin.invoke("ask", options, channel=SECOND_GENERAL, author=BOB)
        followups = rf"/webhooks/\d+/{interaction['token']}"
        await standin.wait_for(lambda: standin.calls_to("POST", followups))
        await settled(first, second)

    assert standin.shards_sent("INTERACTION_CREATE", interaction) == [1]
    assert len(standin.calls_to("POST", rf"/interactions/{interaction['id']}/.*")) == 1, "deferred once"
    assert len(standin.calls_to("POST", followups)) == 1
    [answer] = standin.bot_messages(SECOND_GENERAL)  # the follow-up, as its last edit left it
    assert 'you asked "What is a shard?"' in answer["content"]
    [row] = await ledger.usage(user=f"discord:{BOB}")
    assert row.requests == 1


async def test_a_dm_is_answered_by_the_adapter_running_shard_0_only(make_adapter, standin, ledger):
    first, second = make_adapter(Shards(2, (0,))), make_adapter(Shards(2, (1,)))
    async with running(first, second):
        question = await standin.post("What is io.net?", channel=DM_CHANNEL, author=BOB)
        answer = await answered(standin, question)
        await settled(first, second)

    assert answer["channel_id"] == str(DM_CHANNEL) and 'you asked "What is io.net?"' in answer["content"]
    assert len(standin.replies_to(question)) == 1
    assert standin.shards_sent("MESSAGE_CREATE", question) == [0]
    assert received(first, question) and not received(second, question)
    [row] = await ledger.usage(user=f"discord:{BOB}")
    assert row.requests == 1


async def test_auto_runs_the_count_discord_recommends_and_each_shard_resumes_its_own_session(make_adapter, standin, caplog):
    caplog.set_level(logging.INFO, logger="iobot.discord")
    adapter = make_adapter(Shards("auto"))
    async with running(adapter):
        assert len(standin.calls_to("GET", "/gateway/bot")) == 1
        assert sorted(identify["shard"] for identify in standin.identifies) == [[0, 2], [1, 2]]
        assert adapter.client.shard_count == 2 and sorted(adapter.client.shards) == [0, 1]
        assert {guild.id for guild in adapter.client.guilds} == {GUILD_ID, SECOND_GUILD}
        for channel in (GENERAL, SECOND_GENERAL, DM_CHANNEL):
            await answered(standin, await standin.post(f"{MENTION} hello", mention_bot=True, channel=channel))

        sessions = {shard: session.session_id for shard, session in standin.sessions.items()}
        await standin.disconnect()
        # Sent while the bot is away: each shard's events wait for that shard to resume.
        away = [await standin.post(f"{MENTION} still there?", mention_bot=True, channel=c) for c in (GENERAL, SECOND_GENERAL)]
        for question in away:
            await answered(standin, question)
        await standin.wait_for(standin.ready.is_set)
        assert sorted(resume["session_id"] for resume in standin.resumes) == sorted(sessions.values())
        assert len(standin.identifies) == 2, "resumed, not new sessions"

    assert not any("does not run Discord shard 0" in record.getMessage() for record in caplog.records)
    assert any(record.getMessage().endswith("running shards 0, 1 of 2") for record in caplog.records)


async def test_two_iobot_run_processes_share_the_shards_each_charging_its_own_ledger(tmp_path):
    """The wiring, as operators run it: one `iobot run` per shard, each logging the shard it runs."""
    async with DiscordStandIn(shard_count=2) as standin:
        workdirs = [tmp_path / "shard-0", tmp_path / "shard-1"]
        processes = []
        try:
            for shard, workdir in enumerate(workdirs):
                workdir.mkdir()
                env = discord_environment(workdir, standin, DISCORD_SHARD_COUNT="2", DISCORD_SHARD_IDS=str(shard))
                stderr = (workdir / "stderr.log").open("w")
                processes.append(
                    await asyncio.create_subprocess_exec(
                        *IOBOT, "run", "--emulator", stdin=subprocess.DEVNULL, stderr=stderr, env=env
                    )
                )
            await standin.wait_for(standin.ready.is_set, timeout=30)
            questions = [
                await standin.post(f"{MENTION} What is io.net?", mention_bot=True, channel=GENERAL, author=ALICE),
                await standin.post("What is a DM?", channel=DM_CHANNEL, author=ALICE),
                await standin.post(f"{MENTION} What is a shard?", mention_bot=True, channel=SECOND_GENERAL, author=BOB),
            ]
            for question in questions:
                await answered(standin, question)
            logs = [workdir / "stderr.log" for workdir in workdirs]  # the connected line comes once READY settles
            await standin.wait_for(lambda: all("connected to Discord" in log.read_text() for log in logs), timeout=20)
            for process in processes:
                process.send_signal(signal.SIGTERM)
            assert [await asyncio.wait_for(process.wait(), timeout=20) for process in processes] == [0, 0]
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()

    assert [standin.shards_sent("MESSAGE_CREATE", question) for question in questions] == [[0], [0], [1]]
    assert all(len(standin.replies_to(question)) == 1 for question in questions)
    ledgers = []
    for workdir in workdirs:
        with sqlite3.connect(workdir / "ledger.sqlite3") as db:
            ledgers.append(db.execute("SELECT user, requests FROM usage").fetchall())
    assert ledgers == [[(f"discord:{ALICE}", 2)], [(f"discord:{BOB}", 1)]]
    first_log, second_log = [log.read_text() for log in logs]
    assert "in 1 servers, running shard 0 of 2" in first_log and "does not run Discord shard 0" not in first_log
    assert "in 1 servers, running shard 1 of 2" in second_log and "does not run Discord shard 0" in second_log


async def test_without_message_content_every_shard_gets_server_messages_blank_unless_they_mention_the_bot(make_adapter, standin):
    adapter = make_adapter(Shards(2), message_content=False)
    async with running(adapter):
        plain = await standin.post("The deploy failed at 3am.", author=BOB, channel=SECOND_GENERAL)
        question = await standin.post(
            f"{MENTION} What failed?", mention_bot=True, channel=SECOND_GENERAL, reply_to=int(plain["id"])
        )
        answer = await answered(standin, question)
        interaction = await standin.invoke_menu("Summarize", plain)  # a menu brings the text along
        followups = rf"/webhooks/\d+/{interaction['token']}"
        await standin.wait_for(lambda: standin.calls_to("POST", followups))
        await settled(adapter)

    assert standin.shards_sent("MESSAGE_CREATE", plain) == standin.shards_sent("INTERACTION_CREATE", interaction) == [1]
    [(_, _, seen)] = [sent for sent in standin.sent if sent[1] == "MESSAGE_CREATE" and sent[2]["id"] == plain["id"]]
    assert seen["content"] == "" and plain["content"] == "The deploy failed at 3am."
    assert 'you asked "What failed?"' in answer["content"]
    assert "Key points" in standin.bot_messages(SECOND_GENERAL)[-1]["content"]


# --- what Discord refuses -------------------------------------------------------------------------


async def test_a_bot_that_needs_shards_run_without_them_is_told_to_set_the_count(make_adapter):
    adapter = make_adapter(Shards())  # one shard, discord.py's plain client, against a world of two
    with pytest.raises(AdapterError, match="set DISCORD_SHARD_COUNT=auto, or a larger count"):
        await asyncio.wait_for(adapter.start(), timeout=10)
    await adapter.stop()


async def test_a_count_other_than_the_bots_is_refused_with_the_settings_named(make_adapter):
    adapter = make_adapter(Shards(3, (0,)))
    with pytest.raises(AdapterError, match="every process of the bot needs the same DISCORD_SHARD_COUNT"):
        await asyncio.wait_for(adapter.start(), timeout=10)
    await adapter.stop()


async def test_an_adapter_never_started_stops_quietly(make_adapter):
    await make_adapter(Shards(2, (1,))).stop()


# --- settings --------------------------------------------------------------------------------------


@pytest.fixture
def environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("DISCORD_SHARD_COUNT", "DISCORD_SHARD_IDS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("count", "ids", "shards"),
    [
        (None, None, Shards()),
        ("2", None, Shards(2)),
        ("4", " 1, 3 ,", Shards(4, (1, 3))),
        ("auto", None, Shards("auto")),
        (" AUTO ", "", Shards("auto")),
    ],
)
def test_shard_settings(environment, count, ids, shards):
    for name, value in (("DISCORD_SHARD_COUNT", count), ("DISCORD_SHARD_IDS", ids)):
        if value is not None:
            environment.setenv(name, value)
    assert Shards.from_settings(load_settings(DiscordSettings)) == shards


@pytest.mark.parametrize(
    ("count", "ids", "message"),
    [
        ("0", None, "DISCORD_SHARD_COUNT: must be a number of shards (1 or more) or auto"),
        ("two", None, "DISCORD_SHARD_COUNT: must be a number of shards (1 or more) or auto"),
        (None, "0", "DISCORD_SHARD_IDS is set but DISCORD_SHARD_COUNT is not"),
        ("auto", "0,1", "DISCORD_SHARD_IDS needs a number in DISCORD_SHARD_COUNT, not auto"),
        ("2", "1,2,5", "with DISCORD_SHARD_COUNT=2 the shard ids are 0 to 1; not one of them: 2, 5"),
        ("2", "1,1", "DISCORD_SHARD_IDS: each shard id once"),
        ("2", "first", "DISCORD_SHARD_IDS: must be a comma list of numeric Discord ids"),
    ],
)
def test_shard_settings_are_validated_with_clear_messages(environment, count, ids, message):
    for name, value in (("DISCORD_SHARD_COUNT", count), ("DISCORD_SHARD_IDS", ids)):
        if value is not None:
            environment.setenv(name, value)
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(DiscordSettings)


def test_the_shard_variables_are_known_to_the_checks():
    assert {"DISCORD_SHARD_COUNT", "DISCORD_SHARD_IDS"} <= checks.known_variables(checks.settings_classes())


def test_shards_choose_the_client_and_who_gets_dms():
    intents = discord.Intents.default()
    plain = Shards().client(intents)
    assert type(plain) is discord.Client
    split = Shards(4, (1, 3)).client(intents)
    assert isinstance(split, discord.AutoShardedClient) and (split.shard_count, split.shard_ids) == (4, [1, 3])
    every = Shards(2).client(intents)
    assert isinstance(every, discord.AutoShardedClient) and (every.shard_count, every.shard_ids) == (2, [0, 1])
    asked = Shards("auto").client(intents)
    assert isinstance(asked, discord.AutoShardedClient) and asked.shard_count is None
    assert Shards().gets_dms and Shards("auto").gets_dms and Shards(2).gets_dms and Shards(2, (1, 0)).gets_dms
    assert not Shards(4, (1, 3)).gets_dms


async def test_the_adapter_built_from_settings_runs_their_shards(environment, service, standin, tmp_path):
    environment.setenv("DISCORD_BOT_TOKEN", TOKEN)
    environment.setenv("DISCORD_API_URL", standin.api_url)
    environment.setenv("DISCORD_GATEWAY_URL", standin.gateway_url)
    environment.setenv("DISCORD_SHARD_COUNT", "2")
    environment.setenv("DISCORD_SHARD_IDS", "1")
    adapter = build(load_settings(DiscordSettings), service, state_dir=tmp_path)
    assert adapter.shards == Shards(2, (1,))
    assert isinstance(adapter.client, discord.AutoShardedClient) and adapter.client.shard_ids == [1]
