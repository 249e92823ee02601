"""The per-person rate limit's cost per request as the number of people grows.

Run from the project root: `python benchmarks/ratelimit.py`. Prints one JSON line:
- us_per_request_<n>: microseconds per request when n people each ask once within one minute
  (an injected clock spreads them evenly), two requests each so that every one stays remembered;
- growth: us_per_request at the largest n over that at the smallest (1.0 means flat, O(1));
- loop_s_20000: seconds of loop time for 20,000 people in one minute (the figure to beat was 42.7 s);
- remembered_max: the most people the limit held at once in the largest run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.ratelimit import RateLimit

PEOPLE = (1_000, 20_000, 200_000)
TARGET_GROWTH = 1.5


def run(people: int) -> tuple[float, float, int]:
    """(microseconds per request, loop seconds, most people remembered) for `people` in one minute."""
    now = [0.0]
    limit = RateLimit(2, clock=lambda: now[0])
    remembered = 0
    start = time.perf_counter()
    for person in range(people):
        now[0] = 60.0 * person / people
        limit.wait_needed(f"slack:T1:U{person}")
        limit.wait_needed(f"slack:T1:U{person}")
        remembered = max(remembered, len(limit))
    elapsed = time.perf_counter() - start
    return elapsed / (2 * people) * 1e6, elapsed, remembered


def main() -> None:
    figures: dict[str, float | int | bool] = {}
    per_request = {}
    for people in PEOPLE:
        per_request[people], elapsed, remembered = run(people)
        figures[f"us_per_request_{people}"] = round(per_request[people], 3)
        if people == 20_000:
            figures["loop_s_20000"] = round(elapsed, 3)
    figures["growth"] = round(per_request[PEOPLE[-1]] / per_request[PEOPLE[0]], 2)
    figures["remembered_max"] = remembered
    figures["target_growth"] = TARGET_GROWTH
    figures["ok"] = figures["growth"] <= TARGET_GROWTH
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
