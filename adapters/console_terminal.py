"""The terminal chat when a person sits at it: a prompt with history, answers drawn with rich.

The console adapter uses this when stdin and stdout are both a terminal; piped input stays plain,
line by line. A message is sent with Enter; Esc+Enter, or a line ending in `\\`, starts a new line,
and a multi-line paste arrives whole (the terminal's bracketed paste). While an answer is worked on
a spinner turns until its first words, which then appear as they arrive; Ctrl-C cancels it. The
answer is drawn as markdown: headings, lists, tables, code with its syntax highlighted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input, create_input
from prompt_toolkit.input.typeahead import store_typeahead
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.output import Output, create_output
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment
from rich.spinner import Spinner
from rich.text import Text

from core.errors import Outcome
from core.render import model_line
from core.service import Progress, Reply

PROMPT = "> "
CONTINUATION = ". "  # before the second and later lines of a message
GREETING = (
    "iobot: type a question or a command (`help` lists them). Enter sends; Esc+Enter or a trailing \\ starts a new line; "
    "Ctrl-C cancels an answer; Ctrl-D quits."
)
WAITING = "thinking… (Ctrl-C cancels)"
CANCELLED = "Cancelled: nothing was charged for this answer."
REFRESHES_PER_SECOND = 10  # how often a streaming answer is redrawn


class TerminalMarkdown(Markdown):
    """Markdown as chat platforms show it: a line break in the text is a line break on screen.

    Replies are written for Slack and Discord, which keep every newline (`**Agents**` then one line per
    agent); CommonMark would join such lines into one paragraph. Links show their target in brackets
    after their text, so no text hides where a link goes.
    """

    def __init__(self, markup: str) -> None:
        super().__init__(markup, hyperlinks=False)
        for token in self.parsed:
            for child in token.children or ():
                if child.type == "softbreak":
                    child.type = "hardbreak"


class LastLines:
    """A streaming answer's last screenful: what is on screen while it grows (the whole of it is drawn at the end).

    Drawn a few times a second on rich's refresh thread, so its cost must not grow with the answer:
    only as many source lines as the screen has rows are parsed (each takes a row at least, as line
    breaks are kept; a code block cut open is reopened), and what was drawn is kept until more text
    arrives.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._drawn: tuple[int, list[list[Segment]]] | None = None  # (width, lines)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = max(1, console.height - 2)
        if self._drawn is None or self._drawn[0] != options.max_width:
            markdown = TerminalMarkdown(source_tail(self.text, height))
            self._drawn = (options.max_width, console.render_lines(markdown, options, pad=False)[-height:])
        for line in self._drawn[1]:
            yield from line
            yield Segment.line()


def source_tail(markdown: str, lines: int) -> str:
    """The last `lines` lines of `markdown`, opening a code block again if the cut falls inside one."""
    source = markdown.split("\n")
    if len(source) <= lines:
        return markdown
    fences = sum(line.lstrip().startswith(("```", "~~~")) for line in source[:-lines])
    return ("```\n" if fences % 2 else "") + "\n".join(source[-lines:])


def render_reply(reply: Reply) -> RenderableType:
    """A finished reply for a terminal: its markdown, its notes, then the model and what it cost."""
    text = TerminalMarkdown(reply.text)
    if reply.outcome in (Outcome.REFUSED, Outcome.ERROR, Outcome.USAGE):
        text.style = "yellow"
    parts: list[RenderableType] = [text]
    parts.extend(Text(f"note: {note}", style="italic") for note in reply.notes)
    if reply.model:
        parts.append(Text(f"-- {model_line(reply.model, reply.usage)}", style="dim"))
    return Group(*parts)


def _key_bindings() -> KeyBindings:
    """Enter sends the message; Esc+Enter, or Enter after a trailing backslash, starts a new line."""
    bindings = KeyBindings()

    @bindings.add("enter")
    def send_or_continue(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if buffer.document.text_before_cursor.endswith("\\"):
            buffer.delete_before_cursor(1)
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    @bindings.add("escape", "enter")
    def new_line(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


class Terminal:
    """The prompt the person types at and the screen answers are drawn on.

    `input` and `output` are prompt_toolkit's (a terminal's, or a pipe and a dummy in tests), `console`
    is rich's for the answers, and `history_file` keeps earlier messages across runs (in memory only
    when None): Up and Down recall them.
    """

    def __init__(self, *, input: Input, output: Output, console: Console, history_file: Path | None = None) -> None:
        self.input = input
        self.console = console
        self.session: PromptSession[str] = PromptSession(
            PROMPT,
            multiline=True,  # shown as lines; Enter still sends (see _key_bindings)
            prompt_continuation=CONTINUATION,
            key_bindings=_key_bindings(),
            history=_history(history_file),
            input=self.input,
            output=output,
        )

    @classmethod
    def on(cls, stdin: TextIO, stdout: TextIO, history_file: Path | None) -> Terminal:
        """The terminal that `stdin` and `stdout` are."""
        return cls(
            input=create_input(stdin),
            output=create_output(stdout),
            console=Console(file=stdout, highlight=False),
            history_file=history_file,
        )

    def keys_to_the_chat(self) -> contextlib.AbstractContextManager[None]:
        """For as long as the chat runs, every key goes to it, none to the terminal's own line editing.

        Else a Ctrl-C pressed just as an answer ends, before the next prompt is up, would be the
        terminal's SIGINT and stop iobot, and keys typed then would be echoed twice.
        """
        return self.input.raw_mode()

    def greet(self) -> None:
        self.console.print(Text(GREETING, style="dim"))

    async def read_message(self) -> str | None:
        """The person's next message; None when they press Ctrl-D. Ctrl-C clears the message being typed."""
        while True:
            try:
                # Ctrl-C is a key here (see keys_to_the_chat); and prompt_toolkit's SIGINT handler would
                # take the place of iobot's, which stops it gracefully on a `kill -INT`.
                return await self.session.prompt_async(handle_sigint=False)
            except KeyboardInterrupt:
                continue
            except EOFError:
                return None

    async def answer(self, ask: Callable[[Progress], Coroutine[Any, Any, Reply]]) -> Reply | None:
        """Run `ask(progress)` with the answer drawn live, and show its reply; None when Ctrl-C cancelled it.

        The answer runs in a task of its own, as on the other platforms (Service.drain waits for it);
        cancelling it makes the service release its reservation, so it costs nothing. Other keys
        pressed meanwhile are kept for the next prompt, as a shell keeps what is typed ahead.
        """
        with LiveAnswer(self.console) as screen:
            answer = asyncio.create_task(ask(screen.stream))

            def read_keys() -> None:
                presses = self.input.read_keys()
                if any(press.key == Keys.ControlC for press in presses):
                    answer.cancel()
                else:  # typed ahead: the next prompt takes them
                    store_typeahead(self.input, presses)

            with self.input.attach(read_keys):
                try:
                    reply = await answer
                except asyncio.CancelledError:
                    session = asyncio.current_task()
                    if session is not None and session.cancelling():  # the console is stopping, not the person
                        raise
                    screen.cancelled()
                    return None
            screen.show(reply)
            return reply


class LiveAnswer:
    """One answer on screen: a spinner, then its words as they arrive, then the finished reply in full."""

    def __init__(self, console: Console) -> None:
        self.text = ""
        self._live = Live(
            Spinner("dots", WAITING, style="cyan"),
            console=console,
            refresh_per_second=REFRESHES_PER_SECOND,
            transient=False,
            redirect_stdout=False,  # logs hold their own stream; nothing else prints meanwhile
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveAnswer:
        self._live.start(refresh=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._live.stop()

    async def stream(self, text: str) -> None:
        """The service's progress callback: the answer so far, drawn at the next refresh."""
        if text.strip():
            self.text = text
            self._live.update(LastLines(text))

    def show(self, reply: Reply) -> None:
        """The finished reply, drawn whole when the answer is closed (however long it is)."""
        self._live.update(render_reply(reply))

    def cancelled(self) -> None:
        """What had arrived of a cancelled answer, and that it cost nothing."""
        self._live.update(Group(TerminalMarkdown(self.text), Text(CANCELLED, style="yellow")))


def _history(path: Path | None) -> History:
    """The messages typed before, kept in `path` (readable by its owner only) or in memory."""
    if path is None:
        return InMemoryHistory()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    return FileHistory(path)
