"""A per-person request rate limit, so that one person's burst cannot crowd out everyone else."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0


class RateLimit:
    """At most `per_minute` requests per person in any sliding 60-second window."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._recent: dict[str, deque[float]] = {}

    def wait_needed(self, person: str) -> float:
        """0 if `person` may go ahead now (and counts the request), else seconds until they may."""
        now = self._clock()
        recent = self._recent.setdefault(person, deque())
        while recent and recent[0] <= now - WINDOW_SECONDS:
            recent.popleft()
        if len(recent) >= self.per_minute:
            return recent[0] + WINDOW_SECONDS - now
        recent.append(now)
        self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        """Drop people with no request in the window, so the table does not grow without bound."""
        if len(self._recent) > 1024:
            self._recent = {p: q for p, q in self._recent.items() if q and q[-1] > now - WINDOW_SECONDS}


def busy_message(seconds: float, per_minute: int) -> str:
    return f"You are sending more than {per_minute} requests a minute. Please wait {math.ceil(seconds)} s and try again."
