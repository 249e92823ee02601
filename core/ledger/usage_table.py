"""`iobot usage`'s plain-text table, which each ledger writes from its own rows (`LedgerWithStore.usage_table`).

A busy day holds hundreds of thousands of rows. Turned into Python tuples and formatted one by one they
take seconds, longer than the query; SQLite writes each line itself (`printf`) in a fraction of that. So
the layout is defined here, once: each column as wide as its header or its longest cell, text left-aligned,
numbers right-aligned with thousands separators (the counts are never negative), two spaces between columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from .protocol import USAGE_FIELDS

# UsageRow's fields, in order, then the person's daily budget: a `usage_with_budgets` row.
ROW_KEYS = (*USAGE_FIELDS, "user_limit")


@dataclass(frozen=True)
class Column:
    header: str
    key: str  # one of ROW_KEYS
    numeric: bool


COLUMNS = (
    Column("day (UTC)", "day", numeric=False),
    Column("user", "user", numeric=False),
    Column("model", "model", numeric=False),
    Column("requests", "requests", numeric=True),
    Column("tokens", "total_tokens", numeric=True),
    Column("estimated", "estimated_tokens", numeric=True),
    Column("interrupted", "interrupted_tokens", numeric=True),
    Column("user limit/day", "user_limit", numeric=True),
)
COLUMN_INDEXES = tuple(ROW_KEYS.index(column.key) for column in COLUMNS)  # where each column's cell is in a row


@dataclass(frozen=True)
class UsageTable:
    header: str
    lines: list[str]  # one per row, in the order of `usage()`; none when the day has no use
    interrupted_requests: int  # over those rows: calls cut off when iobot stopped without finishing them


def widths(longest: Sequence[int]) -> list[int]:
    """Each column's width, from its longest text or, for a number, its largest value."""
    return [max(len(column.header), len(f"{value:,}") if column.numeric else value) for column, value in zip(COLUMNS, longest)]


def header(column_widths: Sequence[int]) -> str:
    return "  ".join(column.header.ljust(width) for column, width in zip(COLUMNS, column_widths)).rstrip()


def table_of(rows: Sequence[Sequence[Any]]) -> UsageTable:
    """The table of `usage_with_budgets` rows, formatted in Python: for a ledger whose driver hands rows over cheaply."""
    if not rows:
        return UsageTable("", [], 0)
    longest = [
        max(map(itemgetter(index), rows)) if column.numeric else max(len(row[index]) for row in rows)
        for column, index in zip(COLUMNS, COLUMN_INDEXES)
    ]
    column_widths = widths(longest)
    line = "  ".join(
        f"{{{index}:>{width},}}" if column.numeric else f"{{{index}:<{width}}}"
        for column, index, width in zip(COLUMNS, COLUMN_INDEXES, column_widths)
    )
    interrupted = sum(map(itemgetter(ROW_KEYS.index("interrupted_requests")), rows))
    return UsageTable(header(column_widths), [line.format(*row) for row in rows], interrupted)
