"""Offline token estimates that err on the high side.

Llama and Qwen tokenizers average about four bytes of English per token; counting three bytes per
token, plus a few tokens of framing per message, overestimates ordinary text so that a reservation
made from an estimate is rarely smaller than what the API later reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8
TOKENS_PER_IMAGE = 1_600  # a 1024x1024 tile sequence on Llama 3.2 Vision, rounded up


def estimate_text_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


def estimate_message_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Tokens of an OpenAI-style message list, images included."""
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += estimate_text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    total += estimate_text_tokens(part.get("text", ""))
                elif part.get("type") == "image_url":
                    total += TOKENS_PER_IMAGE
    return total


class InputTooLong(ValueError):
    """The newest message alone, with room for the answer, exceeds the model's context length."""

    def __init__(self, needed: int, limit: int, model: str) -> None:
        super().__init__(
            f"That message is about {needed:,} tokens with room for the answer, but {model.rsplit('/', 1)[-1]} "
            f"takes at most {limit:,}. Please shorten it."
        )
        self.needed = needed
        self.limit = limit


def fit_to_context(messages: list[Mapping[str, Any]], context_length: int, max_tokens: int, model: str) -> list[Mapping[str, Any]]:
    """Drop the oldest history (never the system prompt or the newest message) until prompt + answer fit."""
    system = [m for m in messages[:1] if m.get("role") == "system"]
    history = list(messages[len(system) : -1])
    newest = messages[-1:]
    fixed = estimate_message_tokens(system + newest) + max_tokens
    if fixed > context_length:
        raise InputTooLong(fixed, context_length, model)
    budget = context_length - fixed
    kept: list[Mapping[str, Any]] = []
    for message in reversed(history):
        cost = estimate_message_tokens([message])
        if cost > budget:
            break
        kept.append(message)
        budget -= cost
    kept.reverse()
    # A conversation should not start with an orphaned assistant turn.
    while kept and kept[0].get("role") == "assistant":
        kept.pop(0)
    return system + kept + newest
