"""The console adapter's conversation: what it remembers between lines, through a recording service."""

from __future__ import annotations

import io
from typing import cast

from adapters.console import HISTORY_MESSAGES, ConsoleAdapter
from core.errors import Outcome
from core.service import Reply, Request, Service


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
