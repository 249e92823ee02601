"""The `Store` in memory: one process's state, gone when it stops.

The reference implementation of the protocol, small enough to read at a glance, and the store that
tests of the adapters and the service use; `iobot run` uses the ledger's persistent store. It passes
the same contract suite (tests/test_store_contract.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import date

from ..ratelimit import RateLimit
from .store import CLAIM_SECONDS


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._claims: dict[str, float] = {}  # key -> when it may be claimed again
        self._threads: set[str] = set()
        self._rates: dict[int, RateLimit] = {}
        self._settings: dict[tuple[str, str], str] = {}
        self._refusals: Counter[tuple[date, str]] = Counter()

    async def claim(self, key: str, *, ttl: float = CLAIM_SECONDS) -> bool:
        now = self._clock()
        if self._claims.get(key, now) > now:
            return False
        self._claims[key] = now + ttl
        return True

    async def follow_thread(self, thread: str) -> None:
        self._threads.add(thread)

    async def follows_thread(self, thread: str) -> bool:
        return thread in self._threads

    async def take_request(self, person: str, per_minute: int) -> float:
        if per_minute not in self._rates:
            self._rates[per_minute] = RateLimit(per_minute, clock=self._clock)
        return self._rates[per_minute].wait_needed(person)

    async def setting(self, scope: str, name: str) -> str | None:
        return self._settings.get((scope, name))

    async def set_setting(self, scope: str, name: str, value: str | None) -> None:
        if value is None:
            self._settings.pop((scope, name), None)
        else:
            self._settings[(scope, name)] = value

    async def record_refusal(self, day: date, reason: str) -> None:
        self._refusals[day, reason] += 1

    async def refusals(self, day: date) -> dict[str, int]:
        return {reason: count for (of_day, reason), count in sorted(self._refusals.items()) if of_day == day}
