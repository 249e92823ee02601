"""What one redraw of a streaming answer costs in the terminal chat, as the answer grows.

Run from the project root: `python benchmarks/terminal_stream.py`. While an answer streams, rich
redraws it REFRESHES_PER_SECOND times a second on a thread of its own that shares the interpreter
with the event loop, so a redraw must stay cheap however long the answer gets. For answers of
several sizes (prose, lists, code blocks and tables, as models write them) this times one frame of
`LastLines` (the answer's last screenful, drawn from its last source lines) beside the baseline of
drawing the whole answer as markdown each frame (what a plain `Live(Markdown(text))` does), in the
same run and in turns. Each frame is a new object, so parsing is counted, as when new text arrives.

Prints one JSON line: the median milliseconds per frame of each at each size, their ratio, how much
the frame grows from the smallest answer to the largest, and whether that growth is under
TARGET_GROWTH and the largest frame under TARGET_FRAME_MS.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console, RenderableType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.console_terminal import LastLines, TerminalMarkdown

ROUNDS = int(os.environ.get("TERMINAL_STREAM_ROUNDS", 7))
SIZES_KB = (2, 16, 64)
MAX_SECONDS = 120  # the whole run stops taking rounds after this long
TARGET_GROWTH = 1.5
TARGET_FRAME_MS = 50.0  # a redraw at 10 frames a second then takes at most half of a core

SECTION = (
    "Here is **one way** to do it, with `inline code` and a [link](https://example.com/docs).\n"
    "- first point, short\n"
    "- second point, a little longer than the first one\n\n"
    "```python\n"
    "def scale(values: list[float], factor: float) -> list[float]:\n"
    "    return [value * factor for value in values]\n"
    "```\n\n"
    "| option | default | meaning |\n"
    "|--------|--------:|---------|\n"
    "| width | 80 | columns |\n"
    "| height | 24 | rows |\n\n"
)


def answer(kilobytes: int) -> str:
    return SECTION * (kilobytes * 1024 // len(SECTION) + 1)


def frame_ms(console: Console, make: Callable[[str], RenderableType], text: str) -> float:
    started = time.perf_counter()
    console.print(make(text))
    return (time.perf_counter() - started) * 1000


def main() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=30, color_system="truecolor")
    texts = {size: answer(size) for size in SIZES_KB}
    kinds: dict[str, Callable[[str], RenderableType]] = {"last_lines": LastLines, "whole": TerminalMarkdown}
    times: dict[tuple[str, int], list[float]] = {(kind, size): [] for kind in kinds for size in SIZES_KB}
    deadline = time.monotonic() + MAX_SECONDS
    rounds = 0
    for _ in range(ROUNDS):
        for size, text in texts.items():
            for kind, make in kinds.items():
                times[kind, size].append(frame_ms(console, make, text))
        rounds += 1
        if time.monotonic() > deadline:
            break
        console.file = io.StringIO()  # what was drawn is not kept between rounds
    medians = {f"{kind}@{size}KB": round(statistics.median(values), 2) for (kind, size), values in times.items()}
    smallest, largest = SIZES_KB[0], SIZES_KB[-1]
    growth = medians[f"last_lines@{largest}KB"] / medians[f"last_lines@{smallest}KB"]
    print(
        json.dumps(
            {
                "benchmark": "terminal_stream",
                "rounds": rounds,
                "median_frame_ms": medians,
                "ratio_to_whole": {
                    f"{size}KB": round(medians[f"last_lines@{size}KB"] / medians[f"whole@{size}KB"], 3) for size in SIZES_KB
                },
                "growth": round(growth, 2),
                "target_growth": TARGET_GROWTH,
                "target_frame_ms": TARGET_FRAME_MS,
                "target_met": growth < TARGET_GROWTH and medians[f"last_lines@{largest}KB"] < TARGET_FRAME_MS,
            }
        )
    )


if __name__ == "__main__":
    main()
