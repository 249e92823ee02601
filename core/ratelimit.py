"""A per-person request rate limit, so that one person's burst cannot crowd out everyone else.

It is the generic cell rate algorithm: each person has one number, the time at which their allowance
is whole again. A request spends one slot (60/per_minute seconds of that time); it is allowed while
the allowance owed stays within a minute. So a person may send `per_minute` requests at once, then
one every 60/per_minute seconds, and never more than `per_minute` a minute for long. One float per
person and O(1) work per request, whatever the number of people; a shared store can hold the same
number per person for several replicas.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

WINDOW_SECONDS = 60.0
# Float sums of 60/7-second slots can land a hair above 60 s; this much is no wait at all.
TOLERANCE = 1e-6
# People forgotten at most per allowed request: a constant, so no request pays for everyone's idling.
FORGET_PER_REQUEST = 2


class RateLimit:
    """At most `per_minute` requests per person at once, and `per_minute` a minute over time."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._slot = WINDOW_SECONDS / per_minute
        self._clock = clock
        # person -> when their allowance is whole again; oldest allowed request first.
        self._whole_at: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        """People remembered: at most those allowed a request in the last minute, twice over."""
        return len(self._whole_at)

    def wait_needed(self, person: str) -> float:
        """0 if `person` may go ahead now (and counts the request), else seconds until they may."""
        now = self._clock()
        whole_at = max(self._whole_at.get(person, now), now) + self._slot
        wait = whole_at - now - WINDOW_SECONDS
        if wait > TOLERANCE:
            return wait
        self._whole_at[person] = whole_at
        self._whole_at.move_to_end(person)
        self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        """Drop the longest-unseen people whose allowance is whole again: they are as good as new.

        Each entry was last allowed at most a minute before its allowance is whole, so while the
        oldest one is not yet whole, everyone remembered was allowed a request in the last minute.
        """
        for _ in range(FORGET_PER_REQUEST):
            oldest = next(iter(self._whole_at.items()), None)
            if oldest is None or oldest[1] > now:
                return
            del self._whole_at[oldest[0]]


def busy_message(seconds: float, per_minute: int) -> str:
    return f"You are sending more than {per_minute} requests a minute. Please wait {math.ceil(seconds)} s and try again."
