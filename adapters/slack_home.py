"""The App Home tab: what a person sees on iobot's Home in Slack, published with `views.publish` when they open it.

Everything on it is read when the tab opens, so it is today's: their use and budget from the ledger,
their chat model (the `model` setting the store keeps for them, else the service's default), the daily
limits that stop their requests now, and the commands from their records in core/commands.py, so a
new command shows here with no change to this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from core.commands import COMMANDS
from core.ledger import UsageRow, next_reset, time_until
from core.render import code_table, short_model_name
from core.service import MIN_ANSWER_TOKENS, Service

from .slack_render import SECTION_LIMIT, context_block, to_mrkdwn


@dataclass(frozen=True)
class HomeFigures:
    """One person's numbers for today (a UTC day), as the Home tab shows them."""

    day: date
    rows: list[UsageRow]  # settled use per model
    used: int  # settled and reserved tokens, all models together: what counts against the budget
    budget: int
    model: str
    model_chosen: bool  # picked by the person, not the default
    limits_reached: list[str]  # each a sentence: a limit with too little left for an answer
    resets_in: str  # "in 3 h 12 min"

    @property
    def left(self) -> int:
        return max(0, self.budget - self.used)


async def home_figures(service: Service, person: str) -> HomeFigures:
    """Today's figures for `person` (`slack:T:U`) from the service's ledger, store and quota table.

    A limit counts as reached when less is left of it than the shortest answer the service gives
    (`MIN_ANSWER_TOKENS`): below that, requests are refused. The models checked are the ones that
    can answer the person: their chat model, the vision model and the fallbacks.
    """
    ledger, config = service.ledger, service.config
    model = await service.chat_model(person)
    used = await ledger.used_today(user=person)
    budget = await ledger.user_limit(person)
    reached = []
    if budget - used < MIN_ANSWER_TOKENS:
        reached.append(f"Your daily budget: {max(0, budget - used):,} of {budget:,} tokens left.")
    for name in dict.fromkeys([model, config.vision_model, *config.fallback_models]):
        row = service.quotas.get(name)
        if row is not None and row.api_daily_tokens is not None:
            # One model's total reads its own rows only; `model_totals()` would sum every row of the day.
            left = max(0, row.api_daily_tokens - await ledger.used_today(model=name))
            if left < MIN_ANSWER_TOKENS:
                reached.append(f"{short_model_name(name)}'s daily quota (shared by everyone): {left:,} tokens left.")
    now = datetime.now(UTC)
    return HomeFigures(
        day=now.date(),
        rows=await ledger.usage(user=person),
        used=used,
        budget=budget,
        model=model,
        model_chosen=model != config.model,
        limits_reached=reached,
        resets_in=time_until(next_reset(now) - now),
    )


def home_view(figures: HomeFigures) -> dict[str, Any]:
    """The Home tab as a `views.publish` view: today's figures, then every command with an example."""
    today = [
        f"**Your use today** ({figures.day.isoformat()}, UTC)",
        f"Used {figures.used:,} of your {figures.budget:,} tokens; **{figures.left:,} left**. "
        f"Budgets and quotas reset at 00:00 UTC ({figures.resets_in}).",
    ]
    if figures.rows:
        table = [(short_model_name(r.model), f"{r.requests:,}", f"{r.total_tokens:,}") for r in figures.rows]
        today.append(code_table(("model", "requests", "tokens"), table))
    whose = "your choice" if figures.model_chosen else "the default"
    model = [f"**Your model:** `{short_model_name(figures.model)}` ({whose})"]
    if "model" in COMMANDS:
        model.append("`/io model` shows the choices and picks another.")
    limits = ["**Limits reached today**"]
    limits += [f"- {line}" for line in figures.limits_reached] or ["None: you can ask away."]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "iobot"}},
        _section("\n".join(today)),
        _section("\n".join(model)),
        _section("\n".join(limits)),
        {"type": "divider"},
        {"type": "header", "text": {"type": "plain_text", "text": "Commands"}},
        context_block(
            [
                "Type them after `/io`, after a mention of @iobot, or in a direct message. On any message, "
                "*More actions* offers Summarize, Translate and Ask iobot."
            ]
        ),
    ]
    blocks += [_section(f"`/io {spec.usage}`\n{spec.description}\nExample: `/io {spec.example}`") for spec in COMMANDS.values()]
    return {"type": "home", "blocks": blocks}


def _section(markdown: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": to_mrkdwn(markdown)[:SECTION_LIMIT]}}
