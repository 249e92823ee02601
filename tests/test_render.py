"""Model output as people see it: a link never hides its target, on Slack or Discord, and code stays as written."""

from __future__ import annotations

import json
import re

import pytest

from adapters.discord import MESSAGE_LIMIT, message_pieces
from adapters.slack_render import to_mrkdwn
from core.client import Usage
from core.render import model_line, reveal_links

from .standins.discord import BOT_ID, DM_CHANNEL
from .test_discord import bot as discord_bot  # noqa: F401  (the Discord tests' fixtures)
from .test_discord import http, make_adapter, service, standin  # noqa: F401
from .test_slack import CROWD_PING, slack, start_bot  # noqa: F401  (the Slack tests' fixtures)
from .test_slack import bot as slack_bot  # noqa: F401

PHISHING = "[https://good.example](https://evil.example/login)"


@pytest.mark.parametrize(
    ("markdown", "shown"),
    [
        ("see [docs](https://io.net/docs?a=1&b=2).", "see docs (<https://io.net/docs?a=1&b=2>)."),
        (PHISHING, "https://good.example (<https://evil.example/login>)"),
        ("[https://io.net/](https://io.net)", "<https://io.net>"),  # the text is the target: shown once
        ("[](https://evil.example)", "<https://evil.example>"),
        ("![a cat](https://img.example/cat.png)", "a cat (<https://img.example/cat.png>)"),
        ('[x](<https://evil.example> "Good")', "x (<https://evil.example>)"),  # angle brackets and a title
        ("[x]( https://evil.example )", "x (<https://evil.example>)"),
        ("[a [b] c](https://evil.example)", "a [b] c (<https://evil.example>)"),  # brackets inside the text
        ("[[a](https://x.example)](https://evil.example)", "a (<https://x.example>) (<https://evil.example>)"),
        ("[wiki](https://w.example/A_(b))", "wiki (<https://w.example/A_(b)>)"),
        ("[`code`](https://evil.example)", "`code` (<https://evil.example>)"),  # code inside a link is still a link
        ("[two\nlines](https://evil.example)", "two\nlines (<https://evil.example>)"),
        ("[a [b [c]] d](https://evil.example)", "[a [b [c]] d] (https://evil.example)"),  # unreadable: broken, shown as is
        ("[x](https://evil.example/(a b))", "[x] (https://evil.example/(a b))"),
        ("arr[i](x) and [not a link](relative/path)", "arr[i](x) and [not a link](relative/path)"),
    ],
)
def test_markdown_links_show_their_real_target(markdown, shown):
    assert reveal_links(markdown) == shown


@pytest.mark.parametrize(
    "code",
    [
        "`[x](https://evil.example)`",
        "``a ` [x](https://evil.example)``",
        "```md\n[x](https://evil.example)\n```",
        "```[x](https://evil.example)```",
    ],
)
def test_code_is_left_as_written(code):
    assert reveal_links(f"before {code} after") == f"before {code} after"


def test_hostile_markup_is_revealed_quickly():
    for text in [
        "[" * 20_000,
        "](" * 10_000,
        "`" * 5_000 + "x" * 20_000,
        "[a](https://x" + "(" * 10_000,
        "[" * 2_000 + "a" + "](https://x)" * 2_000,
    ]:
        revealed = reveal_links(text)
        assert "](h" not in revealed


def masked_links(text: str) -> list[str]:
    """Targets Discord would hide: `[text](scheme:...)` outside code, in any form its parser takes."""
    outside_code = re.sub(r"(?<!`)((?>`+))[\s\S]*?[^`]\1(?!`)", "", text)
    return re.findall(r"\]\(\s*<?[A-Za-z][A-Za-z0-9+.-]*:", outside_code)


def test_discord_pieces_hide_no_target_even_when_a_cut_goes_through_code():
    # A one-line code span longer than a message: the cut leaves a piece with an unclosed backtick,
    # where a link inside the span would turn live again.
    line = "`" + "[x](https://evil.example) " * 150 + "`"
    pieces = message_pieces("intro\n" + line + "\n" + PHISHING)
    assert all(len(piece) <= MESSAGE_LIMIT for piece in pieces)
    assert not any(masked_links(piece) for piece in pieces)
    assert "https://good.example (<https://evil.example/login>)" in pieces[-1]


def test_slack_shows_the_target_as_a_link_and_never_a_label():
    rendered = to_mrkdwn(f"{PHISHING} and [x](https://a.example/?q=1|<!channel>) and <https://b.example|hidden>")
    assert "https://good.example (<https://evil.example/login>)" in rendered
    assert "|" not in re.sub(r"&lt;.*?&gt;", "", rendered).replace("?q=1|", ""), "no Slack link carries a label"
    assert not re.search(r"<[^>]*\|", rendered), "no <target|label> link"
    assert not CROWD_PING.search(rendered)


async def test_a_phishing_link_in_a_slack_answer_shows_where_it_goes(slack_bot):  # noqa: F811
    _, key = await slack_bot.command(f"ask {PHISHING}")
    [answer] = await slack_bot.responses(key)
    text = json.dumps(answer, ensure_ascii=False)
    assert "https://good.example (<https://evil.example/login>)" in text
    assert "|https://good.example>" not in text and not re.search(r"<[^>]*\|", text)


async def test_a_phishing_link_in_a_discord_answer_shows_where_it_goes(discord_bot, standin):  # noqa: F811
    question = await standin.post(f"{PHISHING} and ```\n[kept](https://code.example)\n```", channel=DM_CHANNEL)
    [answer] = await standin.wait_for(
        lambda: [m for m in standin.replies_to(question) if m["author"]["id"] == str(BOT_ID) and "\n-# " in m["content"]]
    )
    assert "https://good.example (<https://evil.example/login>)" in answer["content"]
    assert "```\n[kept](https://code.example)\n```" in answer["content"], "code is left as it is"
    assert masked_links(answer["content"]) == []


def test_the_footer_says_when_a_cost_is_an_estimate():
    model = "meta-llama/Llama-3.3-70B-Instruct"
    assert model_line(model, None) == "Llama-3.3-70B-Instruct"
    assert model_line(model, Usage(10, 1224, 1234)) == "Llama-3.3-70B-Instruct · 1,234 tokens"
    assert model_line(model, Usage(600, 40, 640, estimated=True)) == "Llama-3.3-70B-Instruct · ~640 tokens (estimated)"
