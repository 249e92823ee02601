"""Shared state other than money: what every replica of iobot must agree on.

The ledger keeps tokens; the `Store` keeps the rest that must outlive one process or be shared
by several: which events were already taken (a Slack retry, a Discord replay), which threads the
bot follows, each person's request rate, settings kept per person or per channel, and how many
requests were refused for which reason (the operator's dashboard). Every
implementation passes the same contract suite (tests/test_store_contract.py).
"""

from __future__ import annotations

from datetime import date
from typing import Protocol

CLAIM_SECONDS = 24 * 3600.0  # how long a claimed key is remembered: retries and replays come within minutes


class Store(Protocol):
    async def claim(self, key: str, *, ttl: float = CLAIM_SECONDS) -> bool:
        """True for the first caller of `key` (on any replica) within `ttl` seconds, False for every repeat."""
        ...

    async def follow_thread(self, thread: str) -> None:
        """Remember a thread the bot answered in, so that replies there need no mention."""
        ...

    async def follows_thread(self, thread: str) -> bool: ...

    async def take_request(self, person: str, per_minute: int) -> float:
        """0.0 if `person` may make a request now (and counts it), else seconds until they may (not counted).

        At most `per_minute` at once and `per_minute` a minute over time (the generic cell rate
        algorithm, see core/ratelimit.py), counted over all replicas together.
        """
        ...

    async def setting(self, scope: str, name: str) -> str | None:
        """A setting kept for a person (`slack:T1:U1`) or a channel (`slack:T1:C1`), None when unset."""
        ...

    async def set_setting(self, scope: str, name: str, value: str | None) -> None:
        """Set a setting; None removes it."""
        ...

    async def record_refusal(self, day: date, reason: str) -> None:
        """Count one request refused on `day` (UTC) for `reason` (a `core.errors.Refusal`)."""
        ...

    async def refusals(self, day: date) -> dict[str, int]:
        """How many requests were refused on `day`, per reason, counted by every replica."""
        ...
