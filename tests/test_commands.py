"""The command grammar: every command, the question fallback, usage lines for bad arguments."""

from __future__ import annotations

import pytest

from core.commands import COMMANDS, Command, UsageError, help_text, is_informational, parse_command


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ask why is the sky blue?", Command("ask", text="why is the sky blue?")),
        ("why is the sky blue?", Command("ask", text="why is the sky blue?")),
        ("Summarize 20 Long text here.", Command("summarize", text="Long text here.", max_words=20)),
        ("summarize Long text here.", Command("summarize", text="Long text here.")),
        ("translate french Good morning", Command("translate", text="Good morning", language="french")),
        ("sentiment I love it", Command("sentiment", text="I love it")),
        ("classify bug,feature,question The app crashes", Command("classify", text="The app crashes", labels=("bug", "feature", "question"))),
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
    ("line", "usage"),
    [
        ("translate", "translate <language> <text>"),
        ("translate french", "translate <language> <text>"),
        ("summarize -5", "summarize [max_words] <text>"),
        ("summarize -5 some text", "summarize [max_words] <text>"),
        ("summarize 0 some text", "summarize [max_words] <text>"),
        ("summarize 20", "summarize [max_words] <text>"),
        ("summarize", "summarize [max_words] <text>"),
        ("classify spam some text", "classify <label,label,...> <text>"),
        ("classify a,b", "classify <label,label,...> <text>"),
        ("ask", "ask <question>"),
        ("sentiment", "sentiment <text>"),
        ("moderate", "moderate <text>"),
        ("entities", "entities <text>"),
        ("reason", "reason <problem>"),
        ("vision", "vision <image-url> [question]"),
    ],
)
def test_missing_or_malformed_arguments_give_the_usage_line(line, usage):
    with pytest.raises(UsageError) as caught:
        parse_command(line)
    assert str(caught.value) == f"Usage: {usage}"


def test_help_lists_every_command_with_its_usage():
    text = help_text()
    for spec in COMMANDS.values():
        assert f"`{spec.usage}`" in text
    assert help_text("translate").startswith("`translate <language> <text>`")


@pytest.mark.parametrize(
    ("line", "informational"),
    [("help", True), ("usage", True), ("models", True), ("agents", True), ("translate", True),
     ("ask hi", False), ("hi there", False), ("help me", False), ("summarize 5 text", False)],
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
