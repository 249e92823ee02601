"""The console adapter: its conversation (what it remembers between lines), piped and at a terminal.

At a terminal, prompt_toolkit reads the keys a person presses from a pipe and rich draws into a string,
as on a real screen: multi-line messages, Ctrl-C and Ctrl-D, history, answers streamed and drawn as markdown.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from adapters.console import HISTORY_MESSAGES, ConsoleAdapter
from adapters.console_terminal import LastLines, Terminal, render_reply, source_tail
from core.client import IOClient
from core.errors import Outcome
from core.ledger import SQLiteLedger
from core.quotas import load_quota_table
from core.service import Reply, Request, Service, ServiceConfig
from emulator import Emulator


class RecordingService:
    """Answers every line with its own text, and keeps the requests it was given."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def handle(self, request: Request) -> Reply:
        self.requests.append(request)
        if request.text == "usage":
            return Reply("Your use today", outcome=Outcome.USAGE, private=True)
        return Reply(f"echo {request.text}", model="m")


async def test_each_answered_line_is_a_turn_of_the_next_ones_history():
    service = RecordingService()
    lines = "first\nusage\nsecond\n" + "".join(f"q{n}\n" for n in range(HISTORY_MESSAGES))
    stdout = io.StringIO()
    console = ConsoleAdapter(cast(Service, service), "ana", stdin=io.StringIO(lines), stdout=stdout)  # a stand-in service
    await console.run()
    assert "echo second" in stdout.getvalue()
    _, _, second, *_, last = service.requests
    assert list(second.history) == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "echo first"},
    ], "a line that was no conversation (usage) is not remembered"
    assert len(last.history) == HISTORY_MESSAGES and last.history[-1] == {
        "role": "assistant",
        "content": f"echo q{HISTORY_MESSAGES - 2}",
    }


# --- the interactive console: prompt_toolkit reading keys from a pipe, rich drawing into a string ---------

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
ENTER, ESC_ENTER, UP, CTRL_C, CTRL_D = "\r", "\x1b\r", "\x1b[A", "\x03", "\x04"


def pasted(text: str) -> str:
    """`text` as a terminal sends a paste: wrapped in bracketed-paste markers."""
    return f"\x1b[200~{text}\x1b[201~"


@dataclass
class Chat:
    """A person at the interactive console: keys go in through `keys`, the screen is `screen()`."""

    adapter: ConsoleAdapter
    keys: PipeInput
    output: io.StringIO
    ledger: SQLiteLedger
    emulator: Emulator

    def screen(self) -> str:
        return self.output.getvalue()

    def press(self, keys: str) -> None:
        self.keys.send_text(keys)

    async def shows(self, text: str, *, times: int = 1) -> str:
        """The screen, once `text` is on it `times` times."""
        async with asyncio.timeout(10):
            while self.screen().count(text) < times:
                await asyncio.sleep(0.02)
        return self.screen()

    async def at_prompt(self) -> None:
        """Once the next prompt is up and has read the history (in the background, as it starts)."""
        async with asyncio.timeout(10):
            while not self.adapter.at_prompt:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)

    def asked(self) -> list[Any]:
        """The last message of each chat completion the API was asked for."""
        return [r.body["messages"][-1]["content"] for r in self.emulator.requests if r.path == "/chat/completions"]


def terminal_on(keys: PipeInput, output: io.StringIO, history_file: Path | None = None) -> Terminal:
    console = Console(file=output, force_terminal=True, width=100, height=30, color_system="truecolor")
    return Terminal(input=keys, output=DummyOutput(), console=console, history_file=history_file)


@pytest.fixture
async def chat(emulator: Emulator, client: IOClient, ledger: SQLiteLedger, tmp_path: Path) -> AsyncIterator[Chat]:
    async with httpx.AsyncClient() as downloads:
        config = ServiceConfig(model=MODEL, vision_model=MODEL)
        service = Service(client, ledger, load_quota_table(), config, downloads, store=ledger.store)
        with create_pipe_input() as keys:
            output = io.StringIO()
            adapter = ConsoleAdapter(service, "ana", terminal=terminal_on(keys, output, tmp_path / "state" / "history"))
            await adapter.start()
            yield Chat(adapter, keys, output, ledger, emulator)
            await adapter.stop()


async def test_a_multi_line_paste_is_one_message_one_request_one_charge(chat: Chat) -> None:
    chat.press(pasted("first line of the paste\nsecond line\nthird line") + ENTER)
    await chat.shows("tokens")  # the footer closes the answer
    assert chat.asked() == ["first line of the paste\nsecond line\nthird line"]
    [row] = await chat.ledger.usage(user="console:ana")
    assert row.requests == 1 and row.total_tokens > 0


async def test_esc_enter_and_a_trailing_backslash_start_new_lines_of_one_message(chat: Chat) -> None:
    chat.press("one" + ESC_ENTER + "two\\" + ENTER + "three" + ENTER)
    await chat.shows("tokens")
    assert chat.asked() == ["one\ntwo\nthree"]


async def test_ctrl_c_cancels_the_answer_in_flight_charging_nothing_and_the_chat_goes_on(chat: Chat) -> None:
    chat.emulator.answer_delay = 60  # the API is slow: the answer is in flight when Ctrl-C comes
    chat.press("ask a slow question" + ENTER)
    await chat.shows("thinking")
    async with asyncio.timeout(10):
        while not chat.asked():  # reserved, and the API is working on it
            await asyncio.sleep(0.02)
    assert await chat.ledger.reservations_in_flight() == 1
    chat.press(CTRL_C)
    await chat.shows("Cancelled: nothing was charged")
    assert await chat.ledger.reservations_in_flight() == 0
    assert await chat.ledger.usage(user="console:ana") == []

    chat.emulator.answer_delay = 0
    chat.press("and now?" + ENTER)
    await chat.shows("tokens")
    [row] = await chat.ledger.usage(user="console:ana")
    assert row.requests == 1
    last = [r.body["messages"] for r in chat.emulator.requests if r.path == "/chat/completions"][-1]
    assert "a slow question" not in str(last), "a cancelled answer is no turn of the conversation"


async def test_ctrl_c_while_typing_clears_the_line_and_ctrl_d_ends_the_chat(chat: Chat) -> None:
    chat.press("half a thought" + CTRL_C + "ask whole" + ENTER)
    await chat.shows("tokens")
    assert chat.asked() == ["whole"]
    chat.press(CTRL_D)
    await asyncio.wait_for(chat.adapter.wait(), timeout=10)


async def test_up_recalls_earlier_messages_kept_in_the_history_file(chat: Chat, tmp_path: Path) -> None:
    chat.press("ask about rivers" + ENTER)
    await chat.shows("tokens")
    chat.press("ask about lakes" + ENTER)
    await chat.shows("tokens", times=2)
    await chat.at_prompt()
    chat.press(UP + UP + ENTER)
    await chat.shows("tokens", times=3)
    assert chat.asked() == ["about rivers", "about lakes", "about rivers"]
    history = tmp_path / "state" / "history"
    assert "ask about lakes" in history.read_text() and history.stat().st_mode & 0o077 == 0, "kept for its owner only"


class StreamingService:
    """Streams an answer in two steps, waiting for the test between them; the reply is markdown."""

    ANSWER = "Here is a table:\n\n| name | size |\n|------|-----:|\n| alpha | 1 |\n\n```python\ndef answer():\n    return 42\n```"

    def __init__(self) -> None:
        self.go_on = asyncio.Event()
        self.texts: list[str] = []

    async def handle(self, request: Request, progress: Any = None) -> Reply:
        self.texts.append(request.text)
        if progress is not None:
            await progress("Here is a table:")
            await self.go_on.wait()
        return Reply(self.ANSWER, model=MODEL, notes=("Qwen stood in",))


async def test_an_answer_streams_then_is_drawn_whole_as_markdown_and_what_is_typed_meanwhile_comes_next(tmp_path: Path) -> None:
    service = StreamingService()
    output = io.StringIO()
    with create_pipe_input() as keys:
        adapter = ConsoleAdapter(cast(Service, service), "ana", terminal=terminal_on(keys, output))
        await adapter.start()
        keys.send_text("show me" + ENTER)
        async with asyncio.timeout(10):
            while "Here is a table:" not in output.getvalue():
                await asyncio.sleep(0.02)
        assert "alpha" not in output.getvalue(), "what has arrived so far, not more"
        keys.send_text("typed ahead" + ENTER)  # while the answer is still being written
        await asyncio.sleep(0.1)
        service.go_on.set()
        async with asyncio.timeout(10):
            while output.getvalue().count("Llama-3.3-70B-Instruct") < 2:
                await asyncio.sleep(0.02)
        await adapter.stop()
    assert service.texts == ["show me", "typed ahead"], "what was typed during an answer is the next message"
    screen = output.getvalue()
    assert_drawn_as_markdown(screen)
    assert "note: Qwen stood in" in without_escapes(screen)


def without_escapes(screen: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)


def assert_drawn_as_markdown(screen: str) -> None:
    """`StreamingService.ANSWER` drawn by rich: a table with a rule under its header, code in colours."""
    plain = without_escapes(screen)
    assert "| name |" not in plain and "```" not in plain, "markdown is drawn, not shown as written"
    assert re.search(r"name +size\s+─+\s+alpha +1", plain), "the table is drawn: columns aligned, a rule under the header"
    assert re.search(r"\x1b\[[0-9;]+mdef\x1b\[0m", screen) and re.search(r"\x1b\[[0-9;]+mreturn\x1b\[0m", screen), (
        "code keywords are highlighted"
    )


def test_a_reply_is_drawn_with_rich_on_a_terminal_and_plain_when_piped() -> None:
    reply = Reply(StreamingService.ANSWER + "\n\n**bold** words", model=MODEL)
    terminal = Console(file=io.StringIO(), force_terminal=True, width=80, color_system="truecolor")
    terminal.print(render_reply(reply))
    drawn = cast(io.StringIO, terminal.file).getvalue()
    assert_drawn_as_markdown(drawn)
    assert "\x1b[1mbold\x1b[0m" in drawn and "**" not in drawn

    piped = ConsoleAdapter(cast(Service, RecordingService()), "ana", stdin=io.StringIO(), stdout=io.StringIO()).render(reply)
    assert "\x1b" not in piped, "no escape codes in a pipe"
    assert "| alpha | 1 |" in piped and "```python" in piped and "bold words" in piped and "**" not in piped


def test_a_streaming_answer_is_drawn_from_its_last_lines_reopening_a_code_block_cut_open() -> None:
    answer = "intro\n```python\n" + "\n".join(f"x{n} = {n}" for n in range(100)) + "\n"
    tail = source_tail(answer, 10)
    assert tail.startswith("```\n") and tail.endswith("x99 = 99\n") and "x89" not in tail
    closed = source_tail("```\ncode\n```\n" + "".join(f"line {n}\n" for n in range(50)), 5)
    assert not closed.startswith("```"), "a block closed before the cut is not reopened"

    screen = Console(file=io.StringIO(), force_terminal=True, width=60, height=12, color_system=None)
    screen.print(LastLines(answer))
    drawn = cast(io.StringIO, screen.file).getvalue().splitlines()
    assert len(drawn) == 10 and "x99 = 99" in "".join(drawn[-2:]) and "intro" not in "".join(drawn), "the last screenful only"
