"""Results as text people read, in a neutral markdown each adapter converts for its platform.

The neutral form: `**bold**`, `` `code` ``, fenced code blocks, `• ` bullets, `<https://...>` links.
Tables are code blocks so they line up everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from .quotas import QuotaTable
from .workflows import (
    Classification,
    CustomResult,
    Entities,
    Moderation,
    Reasoning,
    Sentiment,
    Summary,
    Translation,
    WorkflowResult,
)

if TYPE_CHECKING:  # for annotations only: the admin commands render without loading the HTTP client
    from .client import AgentInfo, Usage

ENTITY_TITLES = {
    "persons": "People",
    "organizations": "Organizations",
    "locations": "Places",
    "dates": "Dates",
    "events": "Events",
}


def render_result(result: WorkflowResult) -> str:
    match result:
        case Summary(summary, key_points):
            text = f"**Summary**\n{summary}"
            if key_points:
                text += "\n\n**Key points**\n" + bullets(key_points)
            return text
        case Sentiment(label, score):
            return f"**Sentiment:** {label} (score {score:.2f})"
        case Entities(groups):
            if not groups:
                return "No people, organizations, places, dates or events found."
            return "\n".join(
                f"**{ENTITY_TITLES.get(kind, kind.replace('_', ' ').capitalize())}:** {', '.join(names)}"
                for kind, names in groups.items()
            )
        case Moderation():
            return _moderation(result)
        case Translation(text, language):
            return f"**{language_title(language)}:** {text}"
        case Classification(label, labels):
            return f"**Label:** {label} (out of {', '.join(labels)})"
        case Reasoning(text) | CustomResult(text):
            return text
    raise TypeError(f"no rendering for {type(result).__name__}")


def language_title(language: str) -> str:
    """A language as a heading: `french` capitalised, anything written with capitals or as a code (`pt-BR`) as it is."""
    if language.replace(" ", "").isalpha() and language.islower():
        return language[0].upper() + language[1:]
    return language


def _moderation(result: Moderation) -> str:
    flagged = result.flagged
    rows = [(name.replace("_", " "), f"{score:.2f}", "over" if name in flagged else "") for name, score in result.scores.items()]
    table = code_table(("category", "score", f"≥ {result.threshold:.2f}"), rows)
    if flagged:
        verdict = "**Flagged:** " + ", ".join(name.replace("_", " ") for name in flagged)
    else:
        verdict = f"**Nothing crossed the threshold** ({result.threshold:.2f})."
    return f"{verdict}\n{table}"


def render_agents(agents: dict[str, AgentInfo]) -> str:
    if not agents:
        return "The service lists no agents right now."
    lines = ["**Agents**"]
    for agent in agents.values():
        description = f": {agent.description}" if agent.description else ""
        lines.append(f"• **{agent.name}** (`{agent.key}`){description}")
    return "\n".join(lines)


def render_models(quotas: QuotaTable, used: Mapping[str, int]) -> str:
    """The chat models with their daily API quota, what was used of it today, and what is left."""
    rows = []
    for row in quotas.chat_models():
        spent = used.get(row.name, 0)
        limit = row.api_daily_tokens
        rows.append(
            (
                short_model_name(row.name),
                f"{limit:,}" if limit is not None else "n/a",
                f"{spent:,}",
                f"{max(0, limit - spent):,}" if limit is not None else "n/a",
                f"{row.context_length:,}" if row.context_length else "n/a",
                "yes" if row.images else "",
            )
        )
    header = ("model", "API tokens/day", "used today", "left", "context", "images")
    return "**Models** (quotas reset at 00:00 UTC)\n" + code_table(header, rows)


def render_model_choices(choices: Sequence[tuple[str, int | None]], *, default: str) -> str:
    """The models a person may pick, with what is left of each one's daily quota today (None: no quota known).

    Each is named as `model <name>` takes it: without its maker, unless another model has the same name.
    """
    short = [short_model_name(model) for model, _ in choices]
    rows = [
        (
            (name if short.count(name) == 1 else model) + (" (default)" if model == default else ""),
            "n/a" if left is None else f"{left:,}",
        )
        for name, (model, left) in zip(short, choices)
    ]
    return (
        "`model <name>` picks one of these, `model default` goes back to the default "
        "(quotas reset at 00:00 UTC):\n" + code_table(("model", "left today"), rows)
    )


# A code span or block as Discord reads one: a run of backticks up to the next run of the same length.
# The run is taken whole (atomic) and only from its start, so that a long run cannot make this slow.
CODE = r"(?<!`)(?P<ticks>(?>`+))[\s\S]*?[^`](?P=ticks)(?!`)"
# A markdown link in every form Discord shows as a masked link: text with one level of brackets in it,
# the target in angle brackets or not, a title after it.
MASKED_LINK = (
    r"!?\[(?P<text>(?:[^\[\]]|\[[^\[\]]*\])*)\]"
    r"\(\s*<?(?P<target>[A-Za-z][A-Za-z0-9+.-]*:(?:[^\s<>()]|\([^\s<>()]*\)){0,2048}?)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
# What is left of link syntax that the pattern above did not take: `](` before an address.
LINK_TAIL = r"\](?=\(\s*<?[A-Za-z][A-Za-z0-9+.-]*:)"
LINKS = re.compile(f"(?P<code>{CODE})|(?P<link>{MASKED_LINK})|(?P<tail>{LINK_TAIL})")


def reveal_links(markdown: str) -> str:
    """Markdown links with their real target in view: `[text](url)` becomes `text (<url>)`.

    Chat platforms show a link's text and hide its target, so model output such as
    `[https://good.example](https://evil.example)` would point somewhere other than it says. Code is
    left as it is. Link syntax the rewrite cannot read is broken (`] (`) so that it shows as written.
    Each pass takes one `](` away, so nested links come out whole in a few passes.
    """
    while True:
        revealed = LINKS.sub(_reveal, markdown)
        if revealed == markdown:
            return revealed
        markdown = revealed


def _reveal(match: re.Match[str]) -> str:
    if match["code"]:
        return match[0]
    if match["tail"]:
        return "] "
    text, target = match["text"].strip(), match["target"]
    if not text or text.rstrip("/") in (target.rstrip("/"), target.split("://", 1)[-1].rstrip("/")):
        return f"<{target}>"
    return f"{text} (<{target}>)"


def to_plain(text: str) -> str:
    """Neutral markdown without its bold markers, for terminals and logs."""
    return re.sub(r"\*\*(.+?)\*\*", r"\1", text)


def bullets(items: Iterable[str]) -> str:
    return "\n".join(f"• {item}" for item in items)


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A monospace table: columns padded, numbers right-aligned."""
    rows = [tuple(header)] + [tuple(row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def cell(value: str, width: int) -> str:
        numeric = value.replace(",", "").replace(".", "").replace("%", "").isdigit()
        return value.rjust(width) if numeric else value.ljust(width)

    return "\n".join("  ".join(cell(value, width) for value, width in zip(row, widths)).rstrip() for row in rows)


def code_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table in a fenced code block, so it lines up on every platform."""
    return "```\n" + text_table(header, rows) + "\n```"


def short_model_name(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def model_line(model: str, usage: Usage | None) -> str:
    """Which model answered and what it cost, for a reply's footer: `Llama-3.3-70B-Instruct · 812 tokens`.

    A cost iobot estimated (the API reported none) says so: `Llama-3.3-70B-Instruct · ~640 tokens (estimated)`.
    """
    if usage is None:
        return short_model_name(model)
    if usage.estimated:
        return f"{short_model_name(model)} · ~{usage.total_tokens:,} tokens (estimated)"
    return f"{short_model_name(model)} · {usage.total_tokens:,} tokens"
