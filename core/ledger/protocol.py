"""The ledger's interface: how many tokens each person spent on each model on each UTC day, and the limits on that.

The service reserves before every API call (estimated prompt tokens plus `max_tokens`), settles after
it with the tokens the API reports, and releases the reservation when the call fails. A reservation
is refused when it would pass the account's daily quota for the model (all people together) or the
person's daily budget. Nothing here assumes a database: `SQLiteLedger` (sqlite.py) is the one every
deployment of one process uses, `PostgresLedger` (postgres.py) the one several replicas share, and
every implementation passes tests/test_ledger_contract.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import Refusal, UserError
from .latency import Histogram
from .store import Store

if TYPE_CHECKING:
    from .usage_table import UsageTable


class LedgerError(Exception):
    """The ledger could not record or answer something (a refused reservation is `QuotaExceeded`)."""


class QuotaExceeded(LedgerError, UserError):
    """A reservation would pass a daily limit. `str()` is a sentence to show the person (privately)."""

    def __init__(self, message: str, *, used: int, limit: int, needed: int, resets_at: datetime) -> None:
        super().__init__(message)
        self.used = used  # settled + reserved today
        self.limit = limit
        self.needed = needed  # what the refused request asked for
        self.resets_at = resets_at  # next 00:00 UTC


class ModelQuotaExceeded(QuotaExceeded):
    """The account's daily API quota for this model would be passed; another model may still have room."""

    refusal = Refusal.MODEL_QUOTA

    def __init__(self, *, model: str, used: int, limit: int, needed: int, now: datetime) -> None:
        resets_at = next_reset(now)
        name = model.rsplit("/", 1)[-1]
        super().__init__(
            f"{name} has used {used:,} of its {limit:,} tokens for today; this request needs about {needed:,} "
            f"more. It resets at 00:00 UTC ({time_until(resets_at - now)}).",
            used=used,
            limit=limit,
            needed=needed,
            resets_at=resets_at,
        )
        self.model = model


class BudgetExceeded(QuotaExceeded):
    """The person's daily budget (all models together) would be passed."""

    refusal = Refusal.BUDGET

    def __init__(self, *, user: str, used: int, limit: int, needed: int, now: datetime) -> None:
        resets_at = next_reset(now)
        super().__init__(
            f"You have used {used:,} of your {limit:,} tokens today; this request needs about {needed:,} more. "
            f"Your budget resets at 00:00 UTC ({time_until(resets_at - now)}).",
            used=used,
            limit=limit,
            needed=needed,
            resets_at=resets_at,
        )
        self.user = user


class DuplicateRequest(LedgerError):
    """A reservation was already made with this idempotency key: a retried delivery of the same event."""

    def __init__(self, key: str) -> None:
        super().__init__(f"request {key!r} was already handled")
        self.key = key


@dataclass(frozen=True)
class Reservation:
    id: int | str
    user: str
    model: str
    day: date  # the UTC day it is charged to, even when settled after midnight
    tokens: int


@dataclass(frozen=True)
class UsageRow:
    """Settled use of one model by one person on one day: a row of `iobot usage --json`."""

    day: date
    user: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    requests: int
    estimated_tokens: int  # the part of total_tokens that was estimated because the API reported none
    # Calls cut off by a crash: charged to the model's daily quota at their estimate, not to the person
    # (they are in no total_tokens and no budget).
    interrupted_tokens: int = 0
    interrupted_requests: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "user": self.user,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "requests": self.requests,
            "estimated_tokens": self.estimated_tokens,
            "interrupted_tokens": self.interrupted_tokens,
            "interrupted_requests": self.interrupted_requests,
        }


USAGE_FIELDS = tuple(field.name for field in fields(UsageRow))  # in order: the columns of a usage row


@dataclass(frozen=True)
class PersonTotal:
    """What one person settled on one day, all models together, beside their daily budget."""

    user: str
    tokens: int
    budget: int


class Ledger(Protocol):
    """What the service and the CLI need from a ledger; "today" is the current UTC day."""

    kind: str  # the database: "sqlite" or "postgresql" (GET /healthz says which)

    async def reserve(
        self, *, user: str, model: str, tokens: int, model_limit: int | None, idempotency_key: str | None = None
    ) -> Reservation:
        """Hold `tokens` for a call, or raise `BudgetExceeded`, `ModelQuotaExceeded` or `DuplicateRequest`.

        The person's budget is checked first, since no other model helps a person over budget; it is
        the budget in force when `reserve` is called (a `set_user_limit` that returned, from any
        process, applies). `model_limit` None means unlimited. The key is a duplicate while a
        reservation holds it or once its call was settled or released (a platform's retry of the
        same event is not run again). A refused reservation does not use up the key, so the service
        can try another model with it; a fallback after a failed call therefore reserves without it.
        A reservation cut off by a crash frees its key, so that the redelivered event is answered.
        """
        ...

    async def settle(
        self,
        reservation: Reservation,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        estimated: bool,
        seconds: float | None = None,
    ) -> None:
        """Charge what the call really used (which may exceed the reservation) and free the reservation.

        `seconds`, how long the answer took, is counted in the model's latencies of the reservation's day
        (`answer_latencies`), in the database, so every replica's answers are counted together.
        """
        ...

    async def release(self, reservation: Reservation) -> None:
        """The call failed: free the reservation. Releasing a closed reservation does nothing."""
        ...

    async def used_today(self, *, model: str | None = None, user: str | None = None) -> int:
        """Settled plus reserved tokens today, for a model, a person, both, or everyone.

        Without a person this is the account's spend and includes interrupted calls; with one it is
        what that person is charged, which never does.
        """
        ...

    async def usage(self, *, day: date | None = None, user: str | None = None) -> list[UsageRow]:
        """Settled usage of one day (today by default), by person then model."""
        ...

    async def model_totals(self, day: date | None = None) -> dict[str, int]:
        """Settled, interrupted and reserved tokens per model for one day (today by default)."""
        ...

    async def top_users(self, *, day: date | None = None, count: int = 10) -> list[PersonTotal]:
        """The `count` people who settled the most tokens on one day (today by default), most first, with their budgets."""
        ...

    async def answer_latencies(self, day: date | None = None) -> dict[str, Histogram]:
        """Per model, how many answers of one day (today by default) took how long (see latency.py)."""
        ...

    async def set_user_limit(self, user: str, tokens: int | None) -> None:
        """Override a person's daily budget; None goes back to the default.

        Once it returns, every reservation that starts afterwards, in any process, uses the new budget.
        """
        ...

    async def user_limit(self, user: str) -> int: ...

    async def user_limits(self) -> dict[str, int]:
        """The overrides only."""
        ...

    async def reservations_in_flight(self) -> int:
        """Reservations held by calls still running."""
        ...

    async def expire_stale(self) -> int:
        """Free reservations older than the reservation TTL (their caller died or forgot); return how many."""
        ...

    async def ping(self) -> None:
        """Raise `LedgerError` unless the database answers now: a cheap look for /healthz."""
        ...

    async def close(self) -> None: ...


class LedgerWithStore(Ledger, Protocol):
    """A ledger as iobot opens it (`SQLiteLedger`, `PostgresLedger`): with the rest of the shared state in
    the same database, and the bulk reads of `iobot usage`."""

    @property
    def store(self) -> Store: ...

    async def usage_with_budgets(self, *, day: date | None = None, user: str | None = None) -> list[tuple[Any, ...]]:
        """`usage()` as plain tuples (UsageRow's fields, the day as text), each followed by the person's daily budget."""
        ...

    async def usage_json(self, *, day: date | None = None, user: str | None = None) -> list[str]:
        """The rows of `iobot usage --json`: each `UsageRow.as_json()` plus "user_limit", as JSON text."""
        ...

    async def usage_table(self, *, day: date | None = None, user: str | None = None) -> UsageTable:
        """The rows of `iobot usage` as the lines of its plain-text table (usage_table.py)."""
        ...


def next_reset(now: datetime) -> datetime:
    """The next 00:00 UTC strictly after `now`: when daily quotas and budgets start again."""
    day = as_utc(now).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("the ledger's clock must return timezone-aware datetimes")
    return moment.astimezone(UTC)


def time_until(delta: timedelta) -> str:
    """'in 3 h 12 min', rounding up so that a person never retries too early."""
    minutes = math.ceil(delta.total_seconds() / 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} h"] if hours else []
    if minutes or not hours:
        parts.append(f"{minutes} min")
    return "in " + " ".join(parts)
