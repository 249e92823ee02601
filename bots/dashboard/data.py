"""What the dashboard shows, read from the ledger and the store through their protocols.

Every figure comes from the database, never from this process's memory, so that every replica shows
the same page; each read is an indexed query, and all of them together are one page load
(`benchmarks/dashboard.py` times it at a million ledger rows).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, timedelta

from core.ledger import Ledger, PersonTotal, Store
from core.ledger.latency import percentile
from core.quotas import QuotaTable

HISTORY_DAYS = 14  # days in the tokens-by-day chart, the chosen day last
TOP_PEOPLE = 10


@dataclass(frozen=True)
class DayTotals:
    """Tokens spent on one UTC day per model (settled, interrupted and reserved: the account's spend)."""

    day: date
    by_model: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_model.values())


@dataclass(frozen=True)
class QuotaLeft:
    model: str
    used: int
    quota: int

    @property
    def left(self) -> int:
        return max(0, self.quota - self.used)


@dataclass(frozen=True)
class Latency:
    """A model's answers of one day and the seconds within which half of them, and 95%, came."""

    model: str
    answers: int
    p50: float
    p95: float


@dataclass(frozen=True)
class Figures:
    """Every figure of one page: a UTC day's, and the 13 days before it for the tokens per day."""

    day: date
    tokens_by_day: list[DayTotals]  # oldest first
    top_people: list[PersonTotal]  # most first
    quota_left: list[QuotaLeft]  # least left (as a share of the quota) first, then in the quota table's order
    refusals: dict[str, int]  # reason -> requests
    latency: list[Latency]  # by model name


async def read_dashboard(ledger: Ledger, store: Store, quotas: QuotaTable, day: date) -> Figures:
    """Everything the page shows for `day` (a UTC day): its own figures and the 13 days before it."""
    days = [day - timedelta(days=back) for back in range(HISTORY_DAYS - 1, -1, -1)]
    totals, top_people, refusals, histograms = await asyncio.gather(
        asyncio.gather(*(ledger.model_totals(of_day) for of_day in days)),
        ledger.top_users(day=day, count=TOP_PEOPLE),
        store.refusals(day),
        ledger.answer_latencies(day),
    )
    used = totals[-1]
    return Figures(
        day=day,
        tokens_by_day=[DayTotals(of_day, by_model) for of_day, by_model in zip(days, totals)],
        top_people=top_people,
        quota_left=sorted(
            (
                QuotaLeft(row.name, used.get(row.name, 0), row.api_daily_tokens)
                for row in quotas.chat_models()
                if row.api_daily_tokens is not None
            ),
            key=lambda row: row.left / row.quota if row.quota else 0.0,
        ),
        refusals=dict(sorted(refusals.items(), key=lambda item: (-item[1], item[0]))),
        latency=[
            Latency(model, sum(histogram.values()), percentile(histogram, 0.5), percentile(histogram, 0.95))
            for model, histogram in sorted(histograms.items())
        ],
    )
