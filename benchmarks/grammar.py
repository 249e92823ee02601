"""How long the grammar and link revealing take on ordinary and hostile input, in the worst shapes known.

Parsing runs before any rate limit, and revealing runs on every streamed edit of an answer, so both
must stay linear however the input is built. Run from the project root: `python benchmarks/grammar.py`.
Prints one JSON line: milliseconds per call, the median
of a few runs, per case.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable
from functools import partial

from core.commands import UsageError, parse_command
from core.render import reveal_links

RUNS = 5
MEGABYTE = 1_000_000
ANSWER = ("Some prose with a [link](https://io.net/docs) and `code`.\n" * 40 + "```python\nx = [1](2)\n```\n") * 5  # ~14 KB

LINES = {
    "ask_short": "ask What is io.net?",
    "translate_quoted": 'translate "Simplified Chinese" Good morning',
    "ask_1mb": "ask " + "x" * MEGABYTE,
    "word_count_1m_digits": "summarize " + "9" * MEGABYTE + " text",
    "labels_1mb": "classify " + "a," * (MEGABYTE // 2) + " text",
    "unclosed_quote_1mb": 'translate "' + "a" * MEGABYTE,
    "spaces_1mb": "ask" + "\u3000" * MEGABYTE + "hi",
}
ANSWERS = {
    "answer_14kb": ANSWER,
    "brackets_20k": "[" * 20_000,
    "link_tails_10k": "](" * 10_000,
    "backtick_runs_11k": "".join("`" * n + "x" for n in range(1, 150)),
    "nested_links_2k": "[" * 2_000 + "a" + "](https://x.example)" * 2_000,
}


def milliseconds(work: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def parse(line: str) -> None:
    with contextlib.suppress(UsageError):  # a usage error is an answer too
        parse_command(line)


def main() -> None:
    figures = {f"parse_{name}_ms": milliseconds(partial(parse, line)) for name, line in LINES.items()}
    figures |= {f"reveal_{name}_ms": milliseconds(partial(reveal_links, text)) for name, text in ANSWERS.items()}
    print(json.dumps({"benchmark": "grammar", "runs": RUNS, **figures}))


if __name__ == "__main__":
    main()
