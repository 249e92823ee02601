"""Offline token estimates that err on the high side.

Llama and Qwen tokenizers average about four bytes of English per token; counting three bytes per
token, plus a few tokens of framing per message, overestimates ordinary text so that a reservation
made from an estimate is rarely smaller than what the API later reports.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping
from typing import Any

from PIL import Image

BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8
# Images cost one token per 28x28 pixel patch: Qwen2-VL's rate, which counts images into the
# context; Llama 3.2 Vision's largest canvas (1120x1120, four 560 px tiles) comes to 1,600 at it.
IMAGE_PATCH = 28
IMAGE_FRAMING = 2  # the tokens that open and close an image
LARGEST_IMAGE_SIDE = 4096  # the API's limit: an image whose size cannot be read counts as this big


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
                    total += _image_url_tokens(part.get("image_url", {}).get("url", ""))
    return total


def image_tokens(width: int, height: int) -> int:
    """What an image of `width` x `height` pixels costs at most."""
    return math.ceil(width / IMAGE_PATCH) * math.ceil(height / IMAGE_PATCH) + IMAGE_FRAMING


def image_side_within(tokens: int) -> int:
    """The longest side (whole patches) at which an image of any shape costs at most `tokens`; 0 if none."""
    return math.isqrt(max(0, tokens - IMAGE_FRAMING)) * IMAGE_PATCH


def _image_url_tokens(url: str) -> int:
    """An image part's cost, from the size in its data URL's header; the API's largest image otherwise.

    Only the header is parsed, but the whole image is decoded from base64: a JPEG's size can come
    after a large colour profile, and Pillow hands a WEBP to libwebp whole.
    """
    if url.startswith("data:"):
        try:
            with Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))) as image:
                return image_tokens(*image.size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            pass  # not an image Pillow knows: count the largest
    return image_tokens(LARGEST_IMAGE_SIDE, LARGEST_IMAGE_SIDE)


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
