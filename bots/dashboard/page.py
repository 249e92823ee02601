"""The dashboard's HTML: the login form, and the page with each chart beside a table of the same numbers.

The tables carry the figures in full (model ids, exact token counts), so the page reads without
script, without images and on a phone; the charts show their shape. The page reloads itself every
REFRESH_SECONDS with a meta refresh, which needs no script either. No person's message text is ever
in the ledger, so none can be shown: people appear as their ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from html import escape

from core.render import short_model_name

from .charts import Bar, Column, bars, stacked_columns
from .data import Figures

REFRESH_SECONDS = 30
STYLESHEET = "/dashboard/static/dashboard.css"
ICON = "/dashboard/static/icon.svg"


def login_page(*, problem: str = "") -> str:
    """The one-field form that trades the admin token for a session."""
    notice = f'<p class="problem" role="alert">{escape(problem)}</p>' if problem else ""
    body = f"""
<main class="login">
  <h1>iobot dashboard</h1>
  {notice}
  <form method="post" action="/dashboard/login">
    <label for="token">Admin token</label>
    <input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
    <button type="submit">Sign in</button>
  </form>
  <p class="hint">The token is <code>IOBOT_ADMIN_TOKEN</code> of the running service.</p>
</main>"""
    return _document("iobot dashboard: sign in", body, refresh=False)


def dashboard_page(data: Figures, *, today: date, now: datetime) -> str:
    """The whole page for `data.day`; `today` bounds the day picker, `now` is when it was read."""
    day = data.day
    earlier = day - timedelta(days=1)
    later = f'<a href="/dashboard?day={day + timedelta(days=1)}">next day</a>' if day < today else ""
    body = f"""
<header>
  <h1>iobot dashboard</h1>
  <form class="day" method="get" action="/dashboard">
    <label for="day">UTC day</label>
    <input id="day" name="day" type="date" value="{day}" max="{today}">
    <button type="submit">Show</button>
    <a href="/dashboard?day={earlier}">previous day</a> {later} <a href="/dashboard">today</a>
  </form>
  <form class="logout" method="post" action="/dashboard/logout"><button type="submit">Sign out</button></form>
  <p class="updated">Read at {now:%H:%M:%S} UTC; this page reloads every {REFRESH_SECONDS} s.</p>
</header>
<main>
{_tokens_by_day(data)}
{_top_people(data)}
{_quota_left(data)}
{_refusals(data)}
{_latency(data)}
</main>"""
    return _document(f"iobot dashboard: {day}", body, refresh=True)


def _tokens_by_day(data: Figures) -> str:
    columns = [
        Column(f"{totals.day:%m-%d}", [(short_model_name(model), tokens) for model, tokens in sorted(totals.by_model.items())])
        for totals in data.tokens_by_day
    ]
    # One row a day, newest first; a column per model that spent anything in these days, then the day's total.
    models = sorted({model for totals in data.tokens_by_day for model, tokens in totals.by_model.items() if tokens})
    rows = [
        (str(totals.day), *(_count(totals.by_model.get(model, 0)) for model in models), _count(totals.total))
        for totals in reversed(data.tokens_by_day)
    ]
    first, last = data.tokens_by_day[0].day, data.tokens_by_day[-1].day
    return _panel(
        "tokens-by-day",
        f"Tokens per day and model, {first} to {last}",
        stacked_columns("Tokens per UTC day, stacked by model", columns, empty="No tokens spent in these days."),
        ("Day", *models, "Total"),
        rows,
        wide=True,
    )


def _top_people(data: Figures) -> str:
    chart = bars(
        "Biggest users against their daily budgets",
        [
            Bar(
                person.user,
                person.tokens / person.budget if person.budget else 1.0,
                1.0,
                f"{_percent(person.tokens, person.budget)} of budget",
            )
            for person in data.top_people
        ],
        empty="Nobody used any tokens this day.",
    )
    rows = [
        (person.user, _count(person.tokens), _count(person.budget), _percent(person.tokens, person.budget))
        for person in data.top_people
    ]
    return _panel("top-people", f"Biggest users on {data.day}", chart, ("Person", "Tokens", "Budget", "Used"), rows)


def _quota_left(data: Figures) -> str:
    chart = bars(
        "Each model's daily quota left",
        [
            Bar(
                short_model_name(row.model),
                row.left / row.quota if row.quota else 0.0,
                1.0,
                f"{_percent(row.left, row.quota)} left",
                row.model,
            )
            for row in data.quota_left
        ],
        empty="No model in the quota table has a daily quota.",
    )
    rows = [(row.model, _count(row.used), _count(row.quota), _count(row.left)) for row in data.quota_left]
    return _panel("quota-left", f"Daily quota left on {data.day}", chart, ("Model", "Used", "Quota", "Left"), rows)


def _refusals(data: Figures) -> str:
    most = max(data.refusals.values(), default=0)
    chart = bars(
        "Refused requests by reason",
        [Bar(reason, count / most, 1.0, f"{count:,}") for reason, count in data.refusals.items()],
        empty="No request was refused this day.",
    )
    rows = [(reason, _count(count)) for reason, count in data.refusals.items()]
    return _panel("refusals", f"Refusals on {data.day}", chart, ("Reason", "Requests"), rows)


def _latency(data: Figures) -> str:
    slowest = max((row.p95 for row in data.latency), default=0.0)
    chart = bars(
        "Answer latency per model: p50 over p95",
        [
            Bar(short_model_name(row.model), row.p50 / slowest, row.p95 / slowest, f"{row.p50:g} s / {row.p95:g} s", row.model)
            for row in data.latency
        ],
        empty="No answers this day.",
    )
    rows = [(row.model, _count(row.answers), f"{row.p50:g}", f"{row.p95:g}") for row in data.latency]
    return _panel("latency", f"Answer latency on {data.day}", chart, ("Model", "Answers", "p50 (s)", "p95 (s)"), rows)


def _panel(
    anchor: str, heading: str, chart: str, header: Sequence[str], rows: Iterable[Sequence[str]], *, wide: bool = False
) -> str:
    """A chart and its table under one heading; the section's id is the chart's name. A `wide` table goes below its chart.

    A model id in the header is shown by its short name, the whole id on hover.
    """
    head = "".join(f'<th scope="col" title="{escape(cell)}">{escape(short_model_name(cell))}</th>' for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(header)}">None.</td></tr>'
    layout = ' class="wide"' if wide else ""
    return f"""<section id="{anchor}"{layout} aria-labelledby="{anchor}-heading">
  <h2 id="{anchor}-heading">{escape(heading)}</h2>
  <div class="pair">
    <figure>{chart}</figure>
    <div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
  </div>
</section>"""


def _document(title: str, body: str, *, refresh: bool) -> str:
    reload = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{reload}
<title>{escape(title)}</title>
<link rel="icon" href="{ICON}" type="image/svg+xml">
<link rel="stylesheet" href="{STYLESHEET}">
</head>
<body>{body}
</body>
</html>
"""


def _count(value: int) -> str:
    return f"{value:,}"


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"
