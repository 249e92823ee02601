"""The command grammar: every command, the question fallback, help, and usage errors that say what was wrong."""

from __future__ import annotations

import httpx
import pytest

from core.commands import COMMANDS, Command, UsageError, help_text, is_informational, parse_command
from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.service import Request, Service, ServiceConfig

from .standins.discord import EPHEMERAL
from .test_discord import bot, http, make_adapter, service, standin  # noqa: F401  (the Discord tests' fixtures)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ask why is the sky blue?", Command("ask", text="why is the sky blue?")),
        ("why is the sky blue?", Command("ask", text="why is the sky blue?")),
        ("Summarize 20 Long text here.", Command("summarize", text="Long text here.", max_words=20)),
        ("summarize Long text here.", Command("summarize", text="Long text here.")),
        ("translate french Good morning", Command("translate", text="Good morning", language="french")),
        ("sentiment I love it", Command("sentiment", text="I love it")),
        (
            "classify bug,feature,question The app crashes",
            Command("classify", text="The app crashes", labels=("bug", "feature", "question")),
        ),
        ("moderate some text", Command("moderate", text="some text")),
        ("entities Ada met Charles", Command("entities", text="Ada met Charles")),
        ("reason 2 trains leave at noon", Command("reason", text="2 trains leave at noon")),
        ("vision https://x.test/a.png", Command("vision", image="https://x.test/a.png", text="What is in this image?")),
        ("vision https://x.test/a.png how many cats?", Command("vision", image="https://x.test/a.png", text="how many cats?")),
        ("agents", Command("agents")),
        ("models", Command("models")),
        ("usage", Command("usage")),
        ("help", Command("help")),
        ("help translate", Command("help", topic="translate")),
        ("", Command("help")),
        ("   ", Command("help")),
    ],
)
def test_each_command_parses(line, expected):
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    "line",
    ["help me write a haiku", "usage of semicolons in English?", "models of the atom: which is right?", "agents of change"],
)
def test_a_command_word_that_takes_no_text_starts_a_question(line):
    assert parse_command(line) == Command("ask", text=line)


def test_text_keeps_its_line_breaks_and_code():
    text = "summarize 30\nFirst paragraph.\n\n```\ncode  block\n```"
    assert parse_command(text) == Command("summarize", text="First paragraph.\n\n```\ncode  block\n```", max_words=30)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("translate", "Say which language to translate into, then the text."),
        ("translate french", "Give the text to translate into french after the language."),
        ("translate ² hello", "`2` is not a language name."),  # NFKC reads ² as 2
        ('translate "Simplified Chinese hello', "A quote was opened and not closed on the same line."),
        ("summarize -5", "The word count must be a whole number from 1 to 1000, not `-5`."),
        ("summarize -5 some text", "not `-5`"),
        ("summarize 0 some text", "not `0`"),
        ("summarize 2024 was a good year", "Text that starts with a number needs a word count before it."),
        ("summarize 20", "Give the text to summarize after the word count."),
        ("summarize", "Give the text to summarize."),
        ("classify spam some text", "Give two or more labels separated by commas"),
        ("classify bug, feature The app crashes", "no spaces between (or quote them)"),
        ("classify a,b", "Give the text to classify after the labels."),
        ("ask", "Write your question after ask."),
        ("sentiment", "Give the text to rate."),
        ("moderate", "Give the text to score."),
        ("entities", "Give the text to search."),
        ("reason", "Describe the problem after reason."),
        ("vision", "Give a link to the image"),
        ("vision ftp://example.com/cat.png", "`ftp:` links are not supported: give an http or https link to the image."),
        ("vision file:///etc/passwd what is it?", "`file:` links are not supported"),
    ],
)
def test_a_usage_error_says_what_was_wrong_with_the_usage_line_and_an_example(line, problem):
    with pytest.raises(UsageError) as caught:
        parse_command(line)
    spec = caught.value.spec
    assert str(caught.value) == f"{caught.value.problem}\nUsage: {spec.usage}\nExample: {spec.example}"
    assert problem in caught.value.problem
    parse_command(spec.example)  # the example itself is right


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('translate "Simplified Chinese" Good morning', Command("translate", text="Good morning", language="Simplified Chinese")),
        (
            "translate \u201cBrazilian Portuguese\u201d Bom dia",
            Command("translate", text="Bom dia", language="Brazilian Portuguese"),
        ),
        ("translate 'Old English' Hello", Command("translate", text="Hello", language="Old English")),
        ("translate pt-BR Good morning", Command("translate", text="Good morning", language="pt-BR")),
        (
            'classify "bug report,feature request" It crashes',
            Command("classify", text="It crashes", labels=("bug report", "feature request")),
        ),
        ('vision "/tmp/my cat.png" Whose?', Command("vision", image="/tmp/my cat.png", text="Whose?")),
        ("vision C:\\cat.png", Command("vision", image="C:\\cat.png", text="What is in this image?")),  # a drive, no scheme
    ],
)
def test_a_first_argument_of_several_words_is_quoted(line, expected):
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/help", Command("help")),
        ("?", Command("help")),
        ("? translate", Command("help", topic="translate")),
        ("help /Translate", Command("help", topic="translate")),
        ("help frobnicate", Command("help", topic="frobnicate")),
        ("help me", Command("help", topic="me")),
        ("help me write a haiku", Command("ask", text="help me write a haiku")),
    ],
)
def test_help_forms(line, expected):
    assert parse_command(line) == expected


def test_help_for_one_command_and_for_no_such_command():
    one = help_text("translate")
    assert one.startswith("`translate <language> <text>`\nTranslate text into a language.")
    assert '"Simplified Chinese"' in one and "Example: `translate French Good morning`" in one
    unknown = help_text("frobnicate")
    assert unknown.startswith("There is no command `frobnicate`.")
    assert all(f"`{name}`" in unknown for name in COMMANDS)
    assert help_text("`x\u202e" + "y" * 100).startswith("There is no command `xyyy"), (
        "shown without backticks or controls, cut short"
    )


def test_help_lists_every_command_with_its_usage():
    text = help_text()
    for spec in COMMANDS.values():
        assert f"`{spec.usage}`" in text
    assert "`help <command>` explains one command" in text


@pytest.mark.parametrize(
    ("line", "informational"),
    [
        ("help", True),
        ("usage", True),
        ("models", True),
        ("agents", True),
        ("translate", True),
        ("help me", True),
        ("vision ftp://x.example/a.png", True),
        ("ask hi", False),
        ("hi there", False),
        ("help me write", False),
        ("summarize 5 text", False),
    ],
)
def test_informational_lines_are_recognised_for_instant_private_answers(line, informational):
    assert is_informational(line) is informational


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("summarize\xa05\xa0Some text", Command("summarize", text="Some text", max_words=5)),  # no-break spaces
        ("summarize\u200b5\u3000Some text", Command("summarize", text="Some text", max_words=5)),  # zero-width, ideographic
        ("\u200b\ufeff help \u200b", Command("help")),
        ("\uff28\uff25\uff2c\uff30", Command("help")),  # fullwidth
        ("summarize \u0665\u0660 Some text", Command("summarize", text="Some text", max_words=50)),  # Arabic-Indic digits
        ("summarize \u00b2 Some text", Command("summarize", text="\u00b2 Some text")),  # a superscript is no number
        ("summarize \u00bd", Command("summarize", text="\u00bd")),
        ("classify Bug,bug,feature Crash", Command("classify", text="Crash", labels=("Bug", "feature"))),
        ("classify a\u200d,b Crash", Command("classify", text="Crash", labels=("a", "b"))),
        ("translate pt-BR Good morning", Command("translate", text="Good morning", language="pt-BR")),
    ],
)
def test_unicode_spaces_digits_and_invisible_characters(line, expected):
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "summarize +-5 Some text",
        "summarize --5 Some text",
        f"summarize {'9' * 5000} Some text",  # int() would refuse over 4,300 digits
        "summarize 0000000000005 Some text",
        "summarize 1001 Some text",
        "classify " + ",".join(f"l{i}" for i in range(21)) + " Some text",
        "classify " + "x" * 51 + ",y Some text",
        "classify \u200b,\u200b Some text",
        "translate ² Some text",
        "translate " + "x" * 41 + " Some text",
    ],
)
def test_malformed_numbers_labels_and_languages_get_the_usage_line(line):
    with pytest.raises(UsageError):
        parse_command(line)


@pytest.fixture
async def grammar_service(client, ledger):
    config = ServiceConfig(model="meta-llama/Llama-3.3-70B-Instruct", vision_model="meta-llama/Llama-3.2-90B-Vision-Instruct")
    async with httpx.AsyncClient() as public:
        yield Service(client, ledger, load_quota_table(), config, public, store=MemoryStore())


async def test_a_language_keeps_its_case_on_the_way_to_the_api_and_back(grammar_service, emulator):
    reply = await grammar_service.handle(Request(user="console:ana", text="translate pt-BR Good morning"))
    assert emulator.requests[-1].body["args"] == {"type": "translate_text", "target_language": "pt-BR"}
    assert reply.text.startswith("**pt-BR:**")
    reply = await grammar_service.handle(Request(user="console:ana", text='translate "simplified chinese" Good morning'))
    assert emulator.requests[-1].body["args"]["target_language"] == "simplified chinese"
    assert reply.text.startswith("**Simplified chinese:**")


@pytest.mark.parametrize(
    "line",
    ["help translate", "help frobnicate", "/help", "?", "translate French", "summarize +-5 text", "vision ftp://x.example/a.png"],
)
async def test_help_and_usage_errors_are_private_and_cost_nothing(grammar_service, emulator, ledger, line):
    reply = await grammar_service.handle(Request(user="console:ana", text=line))
    assert reply.private and reply.outcome in ("ok", "usage")
    assert emulator.requests == [] and await ledger.usage() == []


@pytest.mark.parametrize(
    ("name", "options", "problem"),
    [
        ("classify", {"labels": "spam", "text": "Buy now"}, "Give two or more labels"),
        ("translate", {"language": "\u00b2", "text": "Hello"}, "is not a language name"),
        ("vision", {"url": "ftp://example.com/cat.png"}, "`ftp:` links are not supported"),
    ],
)
async def test_discord_slash_options_are_checked_by_the_grammar(bot, standin, emulator, name, options, problem):  # noqa: F811
    interaction = await standin.invoke(name, [{"name": key, "type": 3, "value": value} for key, value in options.items()])
    [callback] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/interactions/{interaction['id']}/.*"))
    assert callback.body["type"] == 4 and callback.body["data"]["flags"] == EPHEMERAL
    assert problem in callback.body["data"]["content"] and "\nUsage: " in callback.body["data"]["content"]
    assert emulator.requests == []
