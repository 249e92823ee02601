"""The dashboard's tables as the page shows them, and as the ledger says they must be, for the tests to compare."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from html.parser import HTMLParser

from core.ledger import Ledger, Store
from core.ledger.latency import percentile
from core.quotas import QuotaTable

CHARTS = ("tokens-by-day", "top-people", "quota-left", "refusals", "latency")
Row = tuple[str | int | float, ...]


class _Tables(HTMLParser):
    """The body rows of the table in each `<section id=...>`, cells as text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._section: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self._section = dict(attrs).get("id")
            self.tables[self._section or ""] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._section:
            self.tables[self._section].append([])
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._section:
            self.tables[self._section][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def page_tables(html: str) -> dict[str, list[Row]]:
    """Each chart's table rows as `as_rows` reads them."""
    parser = _Tables()
    parser.feed(html)
    return {section: as_rows(rows) for section, rows in parser.tables.items() if section in CHARTS}


def as_rows(cells: list[list[str]]) -> list[Row]:
    """Table cells with numbers as numbers ("12,345" -> 12345, "0.25" -> 0.25); a table's "None." row is no row."""
    return [tuple(_number(cell) for cell in row) for row in cells if row != ["None."]]


def _number(cell: str) -> str | int | float:
    plain = cell.replace(",", "")
    for kind in (int, float):
        try:
            return kind(plain)
        except ValueError:
            pass
    return cell


async def ledger_tables(ledger: Ledger, store: Store, quotas: QuotaTable, day: date) -> dict[str, list[Row]]:
    """What each table must hold, from the ledger's and the store's own answers."""
    days = [day - timedelta(days=back) for back in range(14)]  # newest first, as the page lists them
    totals = {of_day: await ledger.model_totals(of_day) for of_day in days}
    models = sorted({model for by_model in totals.values() for model, tokens in by_model.items() if tokens})
    history: list[Row] = [
        (str(of_day), *(totals[of_day].get(model, 0) for model in models), sum(totals[of_day].values())) for of_day in days
    ]
    by_person: dict[str, int] = defaultdict(int)
    for row in await ledger.usage(day=day):
        by_person[row.user] += row.total_tokens
    people: list[Row] = []
    for user, tokens in sorted(by_person.items(), key=lambda item: (-item[1], item[0]))[:10]:
        budget = await ledger.user_limit(user)
        people.append((user, tokens, budget, f"{tokens / budget:.0%}"))
    used = await ledger.model_totals(day)
    quotas_left = [
        (row.name, used.get(row.name, 0), row.api_daily_tokens, max(0, row.api_daily_tokens - used.get(row.name, 0)))
        for row in quotas.chat_models()
        if row.api_daily_tokens is not None
    ]
    quotas_left.sort(key=lambda row: row[3] / row[2] if row[2] else 0.0)  # least left first
    refusals = sorted((await store.refusals(day)).items(), key=lambda item: (-item[1], item[0]))
    latencies = await ledger.answer_latencies(day)
    latency: list[Row] = [
        (model, sum(counts.values()), percentile(counts, 0.5), percentile(counts, 0.95))
        for model, counts in sorted(latencies.items())
    ]
    return {
        "tokens-by-day": history,
        "top-people": people,
        "quota-left": list(quotas_left),
        "refusals": list(refusals),
        "latency": latency,
    }
