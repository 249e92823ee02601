"""Long answers as several chat messages, and long text cut short.

Both chat platforms cap a message's length; this is the platform-free half of dealing with that.
Adapters pass their own limits (core/delivery.py shows the pieces and streams them by throttled edits).
"""

from __future__ import annotations

import re

FENCE = re.compile(r"^\s*```")
CLOSE = "\n```"
FENCE_ROOM = 40  # a reopened fence line such as "```python" plus a closing one, with room to spare


def split_message(text: str, limit: int) -> list[str]:
    """Split `text` into pieces of at most `limit` characters, at line breaks where possible.

    A code block cut in two is closed at the end of one piece and reopened (with its language) at
    the start of the next, so every piece renders on its own.
    """
    if limit < 4 * FENCE_ROOM:
        raise ValueError(f"limit must be at least {4 * FENCE_ROOM}")
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    current: list[str] = []
    size = 0  # of "\n".join(current) plus one
    fence: str | None = None  # the opening line of the code block we are in, if any
    for line in _lines_within(text, limit - FENCE_ROOM):
        # Always leave room for a closing fence, in case the piece ends inside a code block.
        if current and size + len(line) + len(CLOSE) > limit:
            pieces.append("\n".join(current) + (CLOSE if fence else ""))
            current = [fence] if fence else []
            size = len(fence) + 1 if fence else 0
        current.append(line)
        size += len(line) + 1
        if FENCE.match(line):
            fence = None if fence else line.strip()
    pieces.append("\n".join(current))
    return [piece for piece in pieces if piece.strip()]


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, an ellipsis showing where (a question quoted, a link named)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lines_within(text: str, width: int) -> list[str]:
    """The lines of `text`, any line longer than `width` cut at spaces (or hard, if it has none)."""
    lines = []
    for line in text.split("\n"):
        while len(line) > width:
            cut = line.rfind(" ", 0, width)
            cut = cut if cut > width // 2 else width
            lines.append(line[:cut])
            line = line[cut:].lstrip(" ")
        lines.append(line)
    return lines
