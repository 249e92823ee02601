"""Answer latencies kept as counts per bucket, so that replicas add theirs up and a day stays a few rows.

Each answer is counted under the smallest bound of `BOUNDS_MS` at or above its time: a ladder from 10 ms
to 10 minutes, each bound 10% above the one before. A day's p50 or p95 per model is then read from a
hundred rows at most, not from every answer, and is exact to within one step of the ladder (10%).
"""

from __future__ import annotations

import bisect

STEP = 1.1  # each bound is 10% above the one before
SMALLEST_MS = 10
LARGEST_MS = 600_000  # 10 minutes: a slower answer is counted here


def _ladder() -> tuple[int, ...]:
    bounds = [SMALLEST_MS]
    while bounds[-1] < LARGEST_MS:
        bounds.append(min(LARGEST_MS, max(bounds[-1] + 1, round(bounds[-1] * STEP))))
    return tuple(bounds)


BOUNDS_MS = _ladder()

# How many answers took up to each bound, in milliseconds: {bound_ms: answers}.
Histogram = dict[int, int]


def bucket_of(seconds: float) -> int:
    """The bound (in ms) an answer of `seconds` is counted under."""
    index = bisect.bisect_left(BOUNDS_MS, seconds * 1000)
    return BOUNDS_MS[min(index, len(BOUNDS_MS) - 1)]


def percentile(histogram: Histogram, fraction: float) -> float:
    """Seconds within which `fraction` (0.5 for the median) of the answers came: the bound where their count is reached."""
    total = sum(histogram.values())
    if total == 0:
        raise ValueError("no answers to take a percentile of")
    wanted = fraction * total
    seen = 0
    for bound in sorted(histogram):
        seen += histogram[bound]
        if seen >= wanted:
            return bound / 1000
    return max(histogram) / 1000
