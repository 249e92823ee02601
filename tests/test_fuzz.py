"""Hostile lines at every entry point of the grammar: the parser, the service, Slack's `/io`, Discord, the console.

Whatever a person types, the answer is the usage line, help or an answer (or, for `vision`, a clear
refusal of the image): never an exception out of a handler, never "something went wrong". Runs are
derandomized and bounded, so they cost seconds and fail the same way every time.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.console import ConsoleAdapter
from core.commands import COMMANDS, Command, UsageError, parse_command
from core.ledger import MemoryStore, SQLiteLedger
from core.quotas import load_quota_table
from core.service import UNEXPECTED_FAILURE, Reply, Request, Service, ServiceConfig

from .standins.discord import BOT_ID, DM_CHANNEL
from .test_discord import http, make_adapter, running, standin  # noqa: F401  (the Discord tests' fixtures)
from .test_slack import slack, start_bot  # noqa: F401  (the Slack tests' fixtures)

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"

SPACES = [" ", "  ", "\t", "\n", "\xa0", "\u2003", "\u3000", "\u200b", "\u2060", "\ufeff", "\u2028", "\x85", "\x1c", "\u200d"]
COMMAND_WORDS = [  # every command, in other cases, in fullwidth letters, with invisible characters
    *COMMANDS,
    "HELP",
    "Summarize",
    "\uff33\uff35\uff2d\uff2d\uff21\uff32\uff29\uff3a\uff25",
    "\uff54\uff52\uff41\uff4e\uff53\uff4c\uff41\uff54\uff45",
    "/help",
    "?",
    "sum\u200dmarize",
    "summarize\u200b",
]
# Superscript 2, Arabic-Indic, fullwidth, mathematical and Mongolian digits, Roman twelve, one half; labels; mentions;
# markup; NUL and an escape sequence; unsupported links; quotes; a right-to-left override; an unknown home directory.
HOSTILE_WORDS = [
    "\u00b2",
    "+-5",
    "-5",
    "-0",
    "0",
    "+7",
    "00000000007",
    "9" * 5000,
    "\u0665",
    "\uff15",
    "\U0001d7d3",
    "\u1810",
    "1e3",
    "0x10",
    "1_000",
    "1,000",
    "\u0661\u0660\u0660\u0661",
    "\u216b",
    "\u00bd",
    ",,,",
    "a,b",
    "a,A",
    ",".join("x" * 60),
    "x" * 200 + ",y",
    "\u200b,\u200b",
    "pt-BR",
    "\u200b",
    "@everyone",
    "<!channel>",
    "&lt;!here&gt;",
    "[x](https://evil.example)",
    "`",
    "```",
    "\x00",
    "\x1b[31m",
    "ftp://example.com/a.png",
    "file:///etc/passwd",
    "data:image/png;base64,AAAA",
    '"Simplified Chinese"',
    '"unclosed',
    "\u201cBrazilian Portuguese\u201d",
    "\u202e",
    "~nobody-here",
]
# Lines that broke a handler before: each entry point runs them first, whatever hypothesis draws.
KNOWN_BREAKERS = [
    "summarize \u00b2",
    "summarize +-5",
    f"summarize {'9' * 5000} text",
    "summarize\xa0+-5\xa0text",
    "vision ~nobody-here",
]
NUMBER_LIKE = (
    st.from_regex(r"\A[+-]{0,3}[0-9]{1,12}\Z")
    | st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=8)
    | st.sampled_from(HOSTILE_WORDS)
)
WORD = NUMBER_LIKE | st.text(max_size=12)
SEPARATED_WORDS = st.lists(st.tuples(st.sampled_from(SPACES), WORD), min_size=1, max_size=4).map(
    lambda pairs: "".join(a + b for a, b in pairs)
)
COMMAND_LINE = st.builds(lambda first, rest: first + rest, st.sampled_from(COMMAND_WORDS), SEPARATED_WORDS | st.just(""))
LINE = st.one_of(COMMAND_LINE, COMMAND_LINE, st.text(max_size=200), st.sampled_from(SPACES).map(lambda space: space * 3))


def known_breakers(test):
    for line in KNOWN_BREAKERS:
        test = example(line)(test)
    return test


FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
END_TO_END = settings(FUZZ, max_examples=40)  # each example goes through a real library and its stand-in


def check(line: str, reply: Reply) -> None:
    """The reply to any line: an answer, help or the usage line; a refused image only for `vision`."""
    assert reply.text != UNEXPECTED_FAILURE and "something went wrong" not in reply.text.lower()
    if reply.outcome == "usage":
        assert "Usage: " in reply.text
    elif reply.outcome == "refused":  # an image that cannot be used, a text too long for the model, a model or
        # instructions the person may not pick or change
        assert parse_command(line).name in ("vision", "model", "instructions") or "Please shorten it" in reply.text, reply.text
    else:
        assert reply.outcome == "ok", (line, reply)
        assert reply.text.strip()


@given(LINE)
@known_breakers
@FUZZ
def test_the_parser_gives_a_command_or_a_usage_error(line):
    try:
        command = parse_command(line)
    except UsageError as error:
        assert str(error).startswith("Usage: ") or "\nUsage: " in str(error)
        return
    assert isinstance(command, Command) and command.name in COMMANDS
    assert 1 <= command.max_words <= 1000
    if command.name in ("ask", "summarize", "translate", "sentiment", "classify", "moderate", "entities", "reason", "vision"):
        assert command.text.strip(), "a command that works on text has some"
    if command.name == "classify":
        assert len(command.labels) >= 2 and all(label.strip() for label in command.labels)
    if command.name == "translate":
        assert command.language.strip() and len(command.language) <= 40


MEGABYTE = 1_000_000
VERY_LONG = [
    "ask " + "x" * MEGABYTE,
    "summarize " + "9" * MEGABYTE + " text",
    "classify " + "a," * (MEGABYTE // 2) + " text",
    "classify " + "[" * MEGABYTE + " text",
    "translate " + "a" * MEGABYTE + " text",
    'translate "' + "a" * MEGABYTE,
    "ask" + "\u3000" * MEGABYTE + "hi",
    "\u200b" * MEGABYTE,
    "help " + "x" * MEGABYTE,
    "vision " + "a:" * MEGABYTE,
]


@pytest.mark.parametrize("line", VERY_LONG, ids=lambda line: line[:12].strip())
async def test_very_long_lines_get_an_answer_or_the_usage_line(service, line):
    check(line, await service.handle(Request(user="console:fuzz", text=line)))


@pytest.fixture
async def fuzz_ledger(tmp_path):
    opened = await SQLiteLedger.open(str(tmp_path / "fuzz.sqlite3"), user_daily_tokens=10**9)
    yield opened
    await opened.close()


@pytest.fixture
async def service(client, fuzz_ledger):
    """The real service before the emulator, with limits that many examples in a row do not reach."""
    config = ServiceConfig(model=MODEL, vision_model=VISION_MODEL, max_tokens=64, user_requests_per_minute=100_000)
    async with httpx.AsyncClient() as public:
        yield Service(client, fuzz_ledger, load_quota_table(), config, public, store=MemoryStore())


@pytest.fixture
def replies(service, monkeypatch) -> list[tuple[str, Reply]]:
    """Every (line, reply) the service gives, whichever adapter asked."""
    seen: list[tuple[str, Reply]] = []
    handle: Callable[..., Awaitable[Reply]] = service.handle

    async def recording(request: Request, *args) -> Reply:
        reply = await handle(request, *args)
        seen.append((request.text, reply))
        return reply

    monkeypatch.setattr(service, "handle", recording)
    return seen


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [record.getMessage() for record in errors]


@given(LINE)
@known_breakers
@FUZZ
async def test_the_service_answers_any_line(service, line):
    check(line, await service.handle(Request(user="console:fuzz", text=line)))


@pytest.fixture
async def slack_bot(start_bot):  # noqa: F811
    return await start_bot()


@pytest.fixture
async def discord_bot(make_adapter, standin):  # noqa: F811
    async with running(make_adapter(), standin) as adapter:
        yield adapter


@given(LINE)
@known_breakers
@END_TO_END
async def test_slack_slash_command_answers_any_line(slack_bot, replies, caplog, line):
    replies.clear()
    escaped = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # as Slack sends it
    response, key = await slack_bot.command(escaped)
    assert response.status_code == 200
    answers = await slack_bot.responses(key)
    assert answers and all(answer.get("text") for answer in answers)
    [(text, reply)] = replies
    check(text, reply)
    no_errors_logged(caplog)


@given(LINE)
@known_breakers
@END_TO_END
async def test_discord_message_answers_any_line(discord_bot, standin, replies, caplog, line):  # noqa: F811
    replies.clear()
    question = await standin.post(line, channel=DM_CHANNEL)

    def answered() -> bool:
        mine = [m for m in standin.replies_to(question) if m["author"]["id"] == str(BOT_ID)]
        return bool(mine) and not discord_bot.in_flight.busy

    await standin.wait_for(answered)
    [(text, reply)] = replies
    check(text, reply)
    no_errors_logged(caplog)


@given(LINE)
@known_breakers
@END_TO_END
async def test_the_console_answers_any_line(service, replies, line):
    replies.clear()
    stdout = io.StringIO()
    await ConsoleAdapter(service, "fuzz", stdin=io.StringIO(line.replace("\n", " ") + "\n"), stdout=stdout).run()
    if replies:
        [(text, reply)] = replies
        check(text, reply)
        assert stdout.getvalue().strip()
    else:
        assert not line.replace("\n", " ").strip(), "only a blank line goes unanswered"


SLASH_OPTIONS = {"translate": ("language", "text"), "classify": ("labels", "text"), "vision": ("url", "question")}


@given(st.sampled_from(sorted(SLASH_OPTIONS)), WORD, WORD)
@END_TO_END
async def test_discord_slash_commands_answer_any_options(discord_bot, standin, replies, caplog, name, first, second):  # noqa: F811
    replies.clear()
    first_option, second_option = SLASH_OPTIONS[name]
    options = [{"name": first_option, "type": 3, "value": first}, {"name": second_option, "type": 3, "value": second or "x"}]
    interaction = await standin.invoke(name, options)
    [callback] = await standin.wait_for(lambda: standin.calls_to("POST", rf"/interactions/{interaction['id']}/.*"))
    if callback.body["type"] == 4:  # answered at once: the options were malformed
        assert "\nUsage: " in callback.body["data"]["content"] and not replies
    else:
        await standin.wait_for(lambda: replies and standin.calls_to("POST", rf"/webhooks/\d+/{interaction['token']}"))
        [(_, reply)] = replies
        assert reply.text != UNEXPECTED_FAILURE and reply.outcome in ("ok", "refused")
    no_errors_logged(caplog)
