"""The terminal as a chat platform: one request per line from stdin until EOF, replies on stdout.

It reads a pipe as happily as a keyboard, so `printf 'ask hi\\nhelp\\n' | iobot run --emulator` works.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
from typing import TextIO

from aiohttp import web

from core.client import Message
from core.delivery import merge_turns
from core.errors import Outcome
from core.render import model_line, to_plain
from core.service import Reply, Request, Service

HISTORY_MESSAGES = 20  # the earlier turns sent along with each question
CHANNEL = "console"  # the terminal is one channel, with its own standing instructions
STOP_GRACE = 5.0  # seconds `stop()` gives the answer being written


class ConsoleAdapter:
    """The terminal chat: what the composition root runs when no chat platform is configured."""

    name = "console"

    def __init__(self, service: Service, user: str, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
        self.service = service
        self.user = f"console:{user}"
        self.display_name = user  # how the person is named in a reply
        self.stdin = stdin
        self.stdout = stdout
        self.interactive = stdin.isatty() and stdout.isatty()
        self.history: list[Message] = []
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._session: asyncio.Task[None] | None = None

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
        """Take no more lines; the one being answered gets `STOP_GRACE` seconds to be written."""
        self._lines.put_nowait(None)
        if self._session is not None and not self._session.done():
            _, pending = await asyncio.wait({self._session}, timeout=STOP_GRACE)
            for task in pending:
                task.cancel()

    async def run(self) -> None:
        """Answer lines until end of input or `stop()`."""
        self._start_reader(asyncio.get_running_loop())
        if self.interactive:
            self._write("iobot: type a question or a command (`help` lists them); Ctrl-D quits.\n")
        while True:
            if self.interactive:
                self._write("> ")
            line = await self._lines.get()
            if line is None:  # end of input, or stop()
                break
            if not line.strip():
                continue
            request = Request(
                user=self.user,
                text=line.strip(),
                history=tuple(self.history),
                local_files=True,
                channel=CHANNEL,
                display_name=self.display_name,
            )
            # In a task of its own, as on the other platforms: Service.drain waits for it, not for the session.
            reply = await asyncio.create_task(self.service.handle(request))
            if reply.outcome == Outcome.OK and reply.model:  # a conversation turn: remember it
                turns: list[Message] = [{"role": "user", "content": request.text}, {"role": "assistant", "content": reply.text}]
                self.history = merge_turns([*self.history, *turns])[-HISTORY_MESSAGES:]
            self._write(self.render(reply) + "\n")

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
        text = to_terminal(reply.text, bold=self.interactive)
        lines = [text, *(f"note: {note}" for note in reply.notes)]
        if reply.model:
            lines.append(f"-- {model_line(reply.model, reply.usage)}")
        return "\n".join(lines) + "\n"

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


def to_terminal(text: str, *, bold: bool) -> str:
    """Neutral markdown for a terminal: `**bold**` in ANSI bold on a tty, plain when piped."""
    return re.sub(r"\*\*(.+?)\*\*", "\033[1m\\1\033[0m", text) if bold else to_plain(text)
