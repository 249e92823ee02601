"""Replies as Slack messages: neutral markdown to mrkdwn, cut to Block Kit's limits, crowd pings defused.

Slack reads `<...>` as mentions and links (`<!channel>`, `<@U123>`, `<https://...|label>`), so
everything the model or a person wrote is escaped (`&`, `<`, `>`, Slack's three) before any link of
our own is built. A link never hides its target: markdown links are shown as `text (<url>)` (see
`core.render.reveal_links`), and only a bare `<https://...>` becomes a Slack link. Then `@channel`,
`@here` and `@everyone` get a zero-width space after the `@` so that no text can ever become a live
crowd ping. The reverse, `from_slack`, turns a message's text
back into plain text for the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from core.chunks import split_message
from core.render import model_line, reveal_links
from core.service import Reply

SlackMessage = dict[str, Any]  # chat.postMessage / chat.update / response_url arguments: text and blocks

SECTION_LIMIT = 3000  # characters in a section block's text
MARKDOWN_LIMIT = 12_000  # characters in a markdown block, and in one chat.appendStream or chat.stopStream call
CONTEXT_LIMIT = 3000  # characters in one context element
PLACEHOLDER = ":hourglass_flowing_sand: Thinking…"
ZERO_WIDTH_SPACE = "\u200b"

FENCE = re.compile(r"^\s*```")
INLINE_CODE = re.compile(r"(`[^`\n]+`)")
CROWD = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
AUTOLINK = re.compile(r"&lt;((?:https?://|mailto:)[^\s|]+?)&gt;")  # an escaped `<https://...>`, with no label
BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
BULLET = re.compile(r"^(\s*)[-*+]\s+")
SLACK_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")
SLACK_CROWD = re.compile(r"<!(channel|here|everyone)(?:\|[^>]*)?>")
OUTCOME_MARKS = {"error": ":warning: ", "refused": ":no_entry: "}


def escape(text: str) -> str:
    """Slack's escaping: the only three characters that mean markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def defuse(text: str) -> str:
    """`@here` and friends as text that cannot ping anyone."""
    return CROWD.sub(f"@{ZERO_WIDTH_SPACE}\\1", text)


def plain(text: str) -> str:
    """Any text shown as it is: escaped and defused (file names, notes, a person's question)."""
    return defuse(escape(text))


def to_mrkdwn(markdown: str) -> str:
    """Markdown (ours or the model's) as Slack mrkdwn.

    Outside code: `**bold**` to `*bold*`, `~~x~~` to `~x~`, headings to bold lines,
    `-`/`*` bullets to `•`, `[text](https://...)` to `text (<https://...>)`. Code blocks and inline code keep
    their text (escaped, as Slack wants even there); a fence loses its language, which Slack would
    show as the first line of code.
    """
    lines = []
    in_code = False
    for line in reveal_links(markdown).split("\n"):
        if FENCE.match(line):
            in_code = not in_code
            lines.append("```")
        elif in_code:
            lines.append(escape(line))
        else:
            lines.append(_line_to_mrkdwn(line))
    return defuse("\n".join(lines))


def _line_to_mrkdwn(line: str) -> str:
    heading = HEADING.match(line)
    if heading:
        return "*" + _inline_to_mrkdwn(heading.group(1)).replace("*", "") + "*"
    line = BULLET.sub(r"\1• ", line)
    return _inline_to_mrkdwn(line)


def _inline_to_mrkdwn(text: str) -> str:
    parts = INLINE_CODE.split(text)  # odd indexes are `code` spans
    for index, part in enumerate(parts):
        part = escape(part)
        if index % 2 == 0:
            part = AUTOLINK.sub(r"<\1>", part)
            part = BOLD.sub(r"*\1*", part)
            part = STRIKE.sub(r"~\1~", part)
        parts[index] = part
    return "".join(parts)


def from_slack(text: str, bot_user_id: str | None = None) -> str:
    """A message's text as the model should read it: without the bot's mention, links unwrapped, unescaped."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    text = SLACK_LINK.sub(_unwrap, text)
    text = SLACK_CROWD.sub(r"@\1", text)
    text = text.replace(ZERO_WIDTH_SPACE, "")
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def _unwrap(link: re.Match[str]) -> str:
    """A web link as its address (`vision <url>` needs it bare); a mail link as its label or address."""
    target, label = link.group(1), link.group(2)
    if target.startswith("mailto:"):
        return label or target.removeprefix("mailto:")
    return target


# --- messages ------------------------------------------------------------------------------------


def context_block(texts: Iterable[str]) -> dict[str, Any]:
    """Small grey lines under a message; each text is mrkdwn already."""
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:CONTEXT_LIMIT]} for text in texts]}


def placeholder() -> SlackMessage:
    return {"text": PLACEHOLDER, "blocks": [context_block([PLACEHOLDER])]}


def answer_messages(markdown: str) -> list[SlackMessage]:
    """An answer (or the part of it streamed so far) as messages of one section each, code blocks intact."""
    return [
        {"text": piece, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": piece}}]}
        for piece in split_message(to_mrkdwn(markdown), SECTION_LIMIT)
    ]


def reply_messages(
    reply: Reply, *, notes: Iterable[str] = (), asked: str | None = None, max_messages: int | None = None
) -> list[SlackMessage]:
    """A finished reply: the answer, `asked` as a context line on top, notes and the model in a footer.

    `max_messages` caps the count (a `response_url` takes five posts); a longer answer is cut, and
    the footer says so.
    """
    notes = [*notes, *reply.notes]
    messages = answer_messages(OUTCOME_MARKS.get(reply.outcome, "") + reply.text)
    if max_messages is not None and len(messages) > max_messages:
        messages = messages[:max_messages]
        notes.append("The answer was too long for one reply and was cut; mention the bot to get all of it in a thread.")
    if asked:
        messages[0]["blocks"].insert(0, context_block([asked]))
    footer = ["\n".join(plain(note) for note in notes)] if notes else []
    if reply.model:
        footer.append(f"_{plain(model_line(reply.model, reply.usage))}_")
    if footer:
        messages[-1]["blocks"].append(context_block(footer))
    return messages


# --- streamed messages ---------------------------------------------------------------------------


def to_markdown(text: str) -> str:
    """Text (ours or the model's) as a streamed message's markdown: standard markdown, which Slack
    renders itself, with crowd pings defused (`@here` and `<!here>` alike)."""
    return defuse(text).replace("<!", f"<{ZERO_WIDTH_SPACE}!")


def streamable(text: str) -> str:
    """The part of an answer still arriving that can be streamed: up to its last whitespace.

    A word is only shown once it is whole, so what is defused is settled: `@her` could still become
    `@here`. Each streamed part is then the start of the next, as `chat.appendStream` needs.
    """
    cut = max(text.rfind(" "), text.rfind("\n"))
    return to_markdown(text[: cut + 1]) if cut >= 0 else ""


def markdown_messages(markdown: str) -> list[SlackMessage]:
    """Markdown as messages of one markdown block each, code blocks intact; an empty one for a stream's start."""
    pieces = split_message(markdown, MARKDOWN_LIMIT) if markdown else [""]
    return [{"text": piece, "blocks": [{"type": "markdown", "text": piece}]} for piece in pieces]


def markdown_of(message: SlackMessage) -> str:
    """The markdown a message made by `markdown_messages` shows."""
    return str(message["blocks"][0]["text"])


def streamed_reply_messages(reply: Reply, *, arrived: str = "") -> list[SlackMessage]:
    """A finished reply as streamed messages: its answer in markdown, notes and the model in a footer.

    An error after part of the answer `arrived` (the API's stream was cut) keeps that part and says
    what went wrong in the footer: it was read as it streamed, and what the API spent is charged.
    """
    notes = [plain(note) for note in reply.notes]
    if reply.outcome == "error" and arrived:
        messages = markdown_messages(arrived)
        notes.insert(0, OUTCOME_MARKS["error"] + plain(reply.text))
    else:
        messages = markdown_messages(to_markdown(OUTCOME_MARKS.get(reply.outcome, "") + reply.text))
    footer = ["\n".join(notes)] if notes else []
    if reply.model:
        footer.append(f"_{plain(model_line(reply.model, reply.usage))}_")
    if footer:
        messages[-1]["blocks"].append(context_block(footer))
    return messages
