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
