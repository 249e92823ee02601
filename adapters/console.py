"""The terminal as a chat platform: one request per message, replies on stdout.

Piped, it reads one request per line until EOF and writes plain text, so
`printf 'ask hi\\nhelp\\n' | iobot run --emulator` works. When stdin and stdout are both a terminal,
a person chats at a prompt instead (adapters/console_terminal.py): history, multi-line messages, answers
streamed as they arrive and drawn as markdown, Ctrl-C to cancel an answer, Ctrl-D to quit.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from aiohttp import web

from core.client import Message
from core.delivery import merge_turns
from core.errors import Outcome
from core.render import model_line, to_plain
from core.service import Reply, Request, Service

if TYPE_CHECKING:  # rich and prompt_toolkit load only for a person at a terminal
    from .console_terminal import Terminal

HISTORY_MESSAGES = 20  # the earlier turns sent along with each question
CHANNEL = "console"  # the terminal is one channel, with its own standing instructions
STOP_GRACE = 5.0  # seconds `stop()` gives the answer being written


class ConsoleAdapter:
    """The terminal chat: what the composition root runs when no chat platform is configured.

    `terminal` is the interactive screen; by default one is opened on the process's terminal when
    stdin and stdout both are one (keeping earlier messages in `history_file`), and None means piped.
    """

    name = "console"

    def __init__(
        self,
        service: Service,
        user: str,
        stdin: TextIO = sys.stdin,
        stdout: TextIO = sys.stdout,
        *,
        terminal: Terminal | None = None,
        history_file: Path | None = None,
    ) -> None:
        self.service = service
        self.user = f"console:{user}"
        self.display_name = user  # how the person is named in a reply
        self.stdin = stdin
        self.stdout = stdout
        if terminal is None and stdin.isatty() and stdout.isatty():
            from .console_terminal import Terminal

            terminal = Terminal.on(stdin, stdout, history_file)
        self.terminal = terminal
        self.history: list[Message] = []
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._session: asyncio.Task[None] | None = None
        self.at_prompt = False  # waiting for the person to type (a terminal only)
        self._stopping = False

    @property
    def interactive(self) -> bool:
        return self.terminal is not None

    def routes(self) -> list[web.RouteDef]:
        return []

    async def start(self) -> None:
        """Start reading and answering; returns at once (a terminal has nothing to connect to)."""
        self._session = asyncio.create_task(self.run(), name="console")

    async def wait(self) -> None:
        """Return at the end of input (or after `stop()`), once the last line is answered."""
        if self._session is not None:
            await self._session

    async def stop(self) -> None:
        """Take no more messages; the one being answered gets `STOP_GRACE` seconds to be written."""
        self._stopping = True
        self._lines.put_nowait(None)
        if self._session is not None and not self._session.done():
            if self.at_prompt:  # nothing to finish: leave the prompt at once
                self._session.cancel()
            _, pending = await asyncio.wait({self._session}, timeout=STOP_GRACE)
            for task in pending:
                task.cancel()

    async def run(self) -> None:
        """Answer messages until the end of input (Ctrl-D at a terminal) or `stop()`."""
        if self.terminal is None:
            await self._run_piped()
        else:
            await self._run_on_terminal(self.terminal)

    async def _run_piped(self) -> None:
        self._start_reader(asyncio.get_running_loop())
        while True:
            line = await self._lines.get()
            if line is None:  # end of input, or stop()
                break
            if not line.strip():
                continue
            request = self._request(line)
            # In a task of its own, as on the other platforms: Service.drain waits for it, not for the session.
            reply = await asyncio.create_task(self.service.handle(request))
            self._remember(request, reply)
            self._write(self.render(reply) + "\n")

    async def _run_on_terminal(self, terminal: Terminal) -> None:
        with terminal.keys_to_the_chat():
            terminal.greet()
            while not self._stopping:
                self.at_prompt = True
                try:
                    text = await terminal.read_message()
                finally:
                    self.at_prompt = False
                if text is None:  # Ctrl-D
                    break
                if not text.strip():
                    continue
                request = self._request(text)
                reply = await terminal.answer(functools.partial(self.service.handle, request))
                if reply is not None:  # None: cancelled with Ctrl-C
                    self._remember(request, reply)

    def _request(self, text: str) -> Request:
        return Request(
            user=self.user,
            text=text.strip(),
            history=tuple(self.history),
            local_files=True,
            channel=CHANNEL,
            display_name=self.display_name,
        )

    def _remember(self, request: Request, reply: Reply) -> None:
        """A conversation turn (an answer a model gave) goes into the history of the next messages."""
        if reply.outcome == Outcome.OK and reply.model:
            turns: list[Message] = [{"role": "user", "content": request.text}, {"role": "assistant", "content": reply.text}]
            self.history = merge_turns([*self.history, *turns])[-HISTORY_MESSAGES:]

    def _start_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read stdin on a daemon thread: a blocked read must not keep the process alive at shutdown."""

        def read() -> None:
            try:
                for line in self.stdin:
                    loop.call_soon_threadsafe(self._lines.put_nowait, line)
                loop.call_soon_threadsafe(self._lines.put_nowait, None)
            except RuntimeError:  # the loop closed first: the process is exiting
                pass

        threading.Thread(target=read, name="console-stdin", daemon=True).start()

    def render(self, reply: Reply) -> str:
        """A reply as plain text, for a pipe."""
        lines = [to_plain(reply.text), *(f"note: {note}" for note in reply.notes)]
        if reply.model:
            lines.append(f"-- {model_line(reply.model, reply.usage)}")
        return "\n".join(lines) + "\n"

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
