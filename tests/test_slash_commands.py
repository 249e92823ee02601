"""Discord's slash commands as generated from the command records: their definitions and what they hand on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import discord
import pytest

from adapters.discord import command_tree, slash_commands
from core.commands import DEFAULT_VISION_QUESTION, Command

# The definitions Discord receives: as they were when each slash command was written by hand, then
# /model (its name completed from the models a person may pick) and /instructions. Each is global and
# says so: installable to servers and to people (integration_types), usable in servers, the bot's DMs
# and other DMs (contexts).
TODAY = [
    {
        "name": "ask",
        "description": "Ask the model anything. Any line that starts with no command word is a question too.",
        "type": 1,
        "options": [{"type": 3, "name": "question", "description": "What to ask the model", "required": True}],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "summarize",
        "description": "Summarize text in at most max_words words (default 100), with its key points.",
        "type": 1,
        "options": [
            {"type": 3, "name": "text", "description": "The text to summarize", "required": True},
            {
                "type": 4,
                "name": "max_words",
                "description": "At most this many words (default 100)",
                "required": False,
                "min_value": 1,
                "max_value": 1000,
            },
        ],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "translate",
        "description": "Translate text into a language.",
        "type": 1,
        "options": [
            {"type": 3, "name": "language", "description": "The language to translate into", "required": True},
            {"type": 3, "name": "text", "description": "The text to translate", "required": True},
        ],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "sentiment",
        "description": "Tell whether text is positive, neutral or negative.",
        "type": 1,
        "options": [{"type": 3, "name": "text", "description": "The text to rate", "required": True}],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "classify",
        "description": "Put text into one of two or more labels.",
        "type": 1,
        "options": [
            {"type": 3, "name": "labels", "description": "Two or more labels, separated by commas", "required": True},
            {"type": 3, "name": "text", "description": "The text to classify", "required": True},
        ],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "moderate",
        "description": "Score text for profanity, hate, harassment, self-harm and other risks.",
        "type": 1,
        "options": [{"type": 3, "name": "text", "description": "The text to score", "required": True}],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "entities",
        "description": "List the people, organizations, places, dates and events in text.",
        "type": 1,
        "options": [{"type": 3, "name": "text", "description": "The text to search", "required": True}],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "reason",
        "description": "Work through a problem step by step.",
        "type": 1,
        "options": [{"type": 3, "name": "problem", "description": "The problem to work through", "required": True}],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "vision",
        "description": "Ask about an image. Attaching images to a message works too.",
        "type": 1,
        "options": [
            {"type": 11, "name": "image", "description": "An image to ask about", "required": False},
            {"type": 3, "name": "url", "description": "Or a link to one", "required": False},
            {"type": 3, "name": "question", "description": "What to ask about it", "required": False},
        ],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "agents",
        "description": "List the AI agents the service offers.",
        "type": 1,
        "options": [],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "models",
        "description": "List the models with their daily quota and today's use.",
        "type": 1,
        "options": [],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "usage",
        "description": "Show your own use today and what is left.",
        "type": 1,
        "options": [],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "model",
        "description": "Show your chat model and the choices, or pick the model that answers your questions.",
        "type": 1,
        "options": [
            {"type": 3, "name": "name", "description": "The model to pick, or default", "required": False, "autocomplete": True}
        ],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "instructions",
        "description": "Show this channel's standing instructions for the model; admins set or clear them.",
        "type": 1,
        "options": [{"type": 3, "name": "text", "description": "The new instructions, or clear", "required": False}],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
    {
        "name": "help",
        "description": "Show this help, or one command's. `/help` and `?` are help too.",
        "type": 1,
        "options": [
            {
                "type": 3,
                "name": "command",
                "description": "A command to explain",
                "required": False,
                "choices": [
                    {"name": "ask", "value": "ask"},
                    {"name": "summarize", "value": "summarize"},
                    {"name": "translate", "value": "translate"},
                    {"name": "sentiment", "value": "sentiment"},
                    {"name": "classify", "value": "classify"},
                    {"name": "moderate", "value": "moderate"},
                    {"name": "entities", "value": "entities"},
                    {"name": "reason", "value": "reason"},
                    {"name": "vision", "value": "vision"},
                    {"name": "agents", "value": "agents"},
                    {"name": "models", "value": "models"},
                    {"name": "usage", "value": "usage"},
                    {"name": "model", "value": "model"},
                    {"name": "instructions", "value": "instructions"},
                    {"name": "help", "value": "help"},
                ],
            }
        ],
        "nsfw": False,
        "dm_permission": True,
        "default_member_permissions": None,
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    },
]


@dataclass
class Answered:
    """Stands in for the adapter's `answer_interaction`: records what each command hands on."""

    calls: list[tuple[Command, list[Any]]] = field(default_factory=list)

    async def __call__(self, interaction: Any, command: Command, attachments: Any = ()) -> None:
        self.calls.append((command, list(attachments)))


@dataclass
class Response:
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def send_message(self, content: str, **options: Any) -> None:
        self.sent.append((content, options))


@dataclass
class Interaction:
    response: Response = field(default_factory=Response)


def definitions(answer: Any) -> list[dict[str, Any]]:
    tree = command_tree(discord.Client(intents=discord.Intents.none()))
    return [command.to_dict(tree) for command in slash_commands(answer)]


def test_the_generated_definitions_are_those_discord_has():
    assert definitions(Answered()) == TODAY


async def invoke(answer: Answered, name: str, interaction: Interaction, /, **options: Any) -> None:
    """Call a slash command's callback as discord.py does once it has read the options."""
    [command] = [command for command in slash_commands(answer) if command.name == name]
    callback: Any = command.callback  # takes the stand-in interaction
    await callback(interaction, **options)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("ask", {"question": "What is io.net?"}, Command("ask", text="What is io.net?")),
        ("summarize", {"text": "Long text"}, Command("summarize", text="Long text", max_words=100)),
        ("summarize", {"text": "Long text", "max_words": 7}, Command("summarize", text="Long text", max_words=7)),
        ("translate", {"language": "pt-BR", "text": "Good morning"}, Command("translate", text="Good morning", language="pt-BR")),
        (
            "classify",
            {"labels": "bug,Bug,idea", "text": "It crashes"},
            Command("classify", text="It crashes", labels=("bug", "idea")),
        ),
        ("reason", {"problem": "2+2?"}, Command("reason", text="2+2?")),
        (
            "vision",
            {"url": "https://example.com/cat.png"},
            Command("vision", text=DEFAULT_VISION_QUESTION, image="https://example.com/cat.png"),
        ),
        ("usage", {}, Command("usage")),
        ("help", {}, Command("help")),
        ("help", {"command": "translate"}, Command("help", topic="translate")),
        ("model", {}, Command("model")),
        ("model", {"name": "Qwen/Qwen3-235B-A22B-FP8"}, Command("model", text="Qwen/Qwen3-235B-A22B-FP8")),
        ("instructions", {"text": "Be brief."}, Command("instructions", text="Be brief.")),
        ("instructions", {}, Command("instructions")),
    ],
)
async def test_options_become_the_command_the_grammar_makes(name, options, expected):
    answered = Answered()
    interaction = Interaction()
    await invoke(answered, name, interaction, **options)
    assert answered.calls == [(expected, [])] and interaction.response.sent == []


async def test_an_attached_image_is_asked_about_as_the_requests_images():
    answered = Answered()
    image = object()  # the attachment travels untouched to the adapter, which downloads it
    await invoke(answered, "vision", Interaction(), image=image, question="Which colour?")
    assert answered.calls == [(Command("ask", text="Which colour?"), [image])]


@pytest.mark.parametrize(
    ("name", "options", "problem"),
    [
        ("translate", {"language": "123", "text": "Good morning"}, "`123` is not a language name."),
        ("classify", {"labels": "bug", "text": "It crashes"}, "Give two or more labels"),
        ("vision", {}, "Give a link to the image"),
        ("vision", {"url": "ftp://example.com/cat.png"}, "`ftp:` links are not supported"),
        ("instructions", {"text": "x" * 4001}, "Instructions are at most 4,000 characters"),
    ],
)
async def test_malformed_options_get_the_usage_error_privately(name, options, problem):
    answered = Answered()
    interaction = Interaction()
    await invoke(answered, name, interaction, **options)
    [(content, sent)] = interaction.response.sent
    assert answered.calls == [] and content.startswith(problem) and "\nUsage: " in content
    assert sent["ephemeral"] is True and sent["allowed_mentions"].everyone is False
