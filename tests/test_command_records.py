"""A command is one record: adding one to `COMMANDS` gives its grammar, help, API call and slash command."""

from __future__ import annotations

from typing import Any

import discord
import httpx
import pytest
from discord import app_commands

from adapters.discord import slash_commands
from core.commands import (
    COMMANDS,
    AgentTask,
    Call,
    Command,
    CommandSpec,
    Option,
    OptionKind,
    UsageError,
    help_text,
    parse_command,
)
from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.service import Request, Service, ServiceConfig
from core.workflows import CustomResult, WorkflowResult

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
TEXT = "Ada Lovelace wrote the first program for Babbage's engine"


def render_keywords(result: WorkflowResult) -> str:
    assert isinstance(result, CustomResult)
    return f"**Keywords:** {result.text}"


KEYWORDS = CommandSpec(
    "keywords",
    "<text>",
    "List the keywords of a text.",
    f"keywords {TEXT}",
    AgentTask(
        "custom",
        lambda command: {"name": "keywords", "objective": "List the keywords", "instructions": "A comma-separated list."},
        render=render_keywords,
    ),
    options=(Option("text", "The text to find keywords in"),),
)


@pytest.fixture
def keywords(monkeypatch):
    monkeypatch.setitem(COMMANDS, "keywords", KEYWORDS)


@pytest.fixture
def service(client, ledger):
    config = ServiceConfig(model=MODEL, vision_model=MODEL, max_tokens=256)
    return Service(client, ledger, load_quota_table(), config, httpx.AsyncClient(), store=MemoryStore())


def test_a_new_command_parses_by_its_options(keywords):
    assert parse_command(f"Keywords {TEXT}") == Command("keywords", text=TEXT)
    with pytest.raises(UsageError) as error:
        parse_command("keywords")
    assert str(error.value) == f"Give the text to find keywords in.\nUsage: keywords <text>\nExample: keywords {TEXT}"


def test_a_new_command_is_in_help(keywords):
    assert "• `keywords <text>`: List the keywords of a text." in help_text()
    assert help_text("keywords") == f"`keywords <text>`\nList the keywords of a text.\nExample: `keywords {TEXT}`"
    assert parse_command("help keywords") == Command("help", topic="keywords")


async def test_a_new_command_runs_its_agent_task_and_renders_the_result(keywords, service, emulator, ledger):
    reply = await service.handle(Request(user="console:tester", text=f"keywords {TEXT}"))
    assert reply.outcome == "ok" and reply.text.startswith("**Keywords:** keywords (List the keywords)")
    body = emulator.requests[-1].body
    assert body["text"] == TEXT and body["agent_names"] == ["custom_agent"]
    assert body["args"] == {
        "type": "custom",
        "name": "keywords",
        "objective": "List the keywords",
        "instructions": "A comma-separated list.",
    }
    assert await ledger.used_today(user="console:tester") > 0, "charged like every agent command"


def test_a_new_command_is_a_slash_command(keywords):
    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))

    async def answer(*_: object) -> None: ...

    found = {command.name: command.to_dict(tree) for command in slash_commands(answer)}
    assert found["keywords"]["description"] == "List the keywords of a text."
    assert found["keywords"]["options"] == [
        {"type": 3, "name": "text", "description": "The text to find keywords in", "required": True}
    ]
    assert {"name": "keywords", "value": "keywords"} in found["help"]["options"][0]["choices"]


TOP = CommandSpec(
    "top",
    "<count> <text>",
    "The text's most important sentences.",
    "top 3 A long text.",
    AgentTask("summarize_text"),
    options=(Option("count", "How many sentences", OptionKind.NUMBER, "max_words", low=1, high=20), Option("text", "The text")),
)


def test_the_options_grammar_reads_each_option_in_order(monkeypatch):
    monkeypatch.setitem(COMMANDS, "top", TOP)
    assert parse_command("top 5 A long text.") == Command("top", text="A long text.", max_words=5)
    assert parse_command('top "5" A long text.') == Command("top", text="A long text.", max_words=5)
    for line, problem in [
        ("top", "Give how many sentences."),
        ("top 5", "Give the text."),
        ("top 50 A long text.", "`count` must be a whole number from 1 to 20, not `50`."),
        ("top five A long text.", "`count` must be a whole number from 1 to 20, not `five`."),
    ]:
        with pytest.raises(UsageError) as error:
            parse_command(line)
        assert error.value.problem == problem, line


def test_every_command_has_a_way_to_be_answered():
    assert {spec.name for spec in COMMANDS.values() if spec.call is Call.CHAT} == {"ask"}
    assert {spec.name for spec in COMMANDS.values() if isinstance(spec.call, AgentTask)} == {
        "summarize",
        "translate",
        "sentiment",
        "classify",
        "moderate",
        "entities",
        "reason",
    }


CAPTION = CommandSpec(
    "caption",
    "<style>",
    "Caption an attached image.",
    "caption funny",
    Call.VISION,
    options=(Option("image", "The image to caption", OptionKind.ATTACHMENT), Option("style", "The caption's style")),
)


async def test_an_attachment_is_no_word_of_the_grammar_and_travels_as_a_file(monkeypatch):
    monkeypatch.setitem(COMMANDS, "caption", CAPTION)
    assert parse_command("caption funny") == Command("caption", text="funny")
    answered = []

    async def answer(interaction: object, command: Command, files: list[object]) -> None:
        answered.append((command, files))

    [slash] = [command for command in slash_commands(answer) if command.name == "caption"]
    callback: Any = slash.callback  # called as discord.py calls it once it has read the options
    image = object()
    await callback(None, image=image, style="funny")
    assert answered == [(Command("caption", text="funny"), [image])]
