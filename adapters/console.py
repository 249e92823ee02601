"""The terminal as a chat platform: one request per line from stdin until EOF, replies on stdout.

It reads a pipe as happily as a keyboard, so `printf 'ask hi\\nhelp\\n' | iobot run --emulator` works.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections import deque
from typing import TextIO

from core.client import Message
from core.render import short_model_name, to_plain
from core.service import Reply, Request, Service

HISTORY_MESSAGES = 20  # the earlier turns sent along with each question


class ConsoleAdapter:
    def __init__(self, service: Service, user: str, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
        self.service = service
        self.user = f"console:{user}"
        self.stdin = stdin
        self.stdout = stdout
        self.interactive = stdin.isatty() and stdout.isatty()
        self.history: deque[Message] = deque(maxlen=HISTORY_MESSAGES)

    async def run(self) -> None:
        if self.interactive:
            self._write("iobot: type a question or a command (`help` lists them); Ctrl-D quits.\n")
        while True:
            if self.interactive:
                self._write("> ")
            line = await asyncio.to_thread(self.stdin.readline)
            if not line:  # EOF
                break
            if not line.strip():
                continue
            request = Request(user=self.user, text=line.strip(), history=tuple(self.history), local_files=True)
            reply = await self.service.handle(request)
            if reply.outcome == "ok" and reply.model:  # a conversation turn: remember it
                self.history.extend(
                    [{"role": "user", "content": request.text}, {"role": "assistant", "content": reply.text}]
                )
            self._write(self.render(reply) + "\n")

    def render(self, reply: Reply) -> str:
        text = to_terminal(reply.text, bold=self.interactive)
        lines = [text, *(f"note: {note}" for note in reply.notes)]
        if reply.model:
            tokens = f", {reply.usage.total_tokens} tokens" if reply.usage else ""
            lines.append(f"-- {short_model_name(reply.model)}{tokens}")
        return "\n".join(lines) + "\n"

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


def to_terminal(text: str, *, bold: bool) -> str:
    """Neutral markdown for a terminal: `**bold**` in ANSI bold on a tty, plain when piped."""
    return re.sub(r"\*\*(.+?)\*\*", "\033[1m\\1\033[0m", text) if bold else to_plain(text)
