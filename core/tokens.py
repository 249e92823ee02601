"""Offline token estimates that err on the high side, and conversations cut to fit a number of tokens.

Llama and Qwen tokenizers average about four bytes of English per token; counting three bytes per
token, plus a few tokens of framing per message, overestimates ordinary text so that a reservation
made from an estimate is rarely smaller than what the API later reports.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .client import Message
from .errors import UserError

BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8
# Images cost one token per 28x28 pixel patch: Qwen2-VL's rate, which counts images into the
# context; Llama 3.2 Vision's largest canvas (1120x1120, four 560 px tiles) comes to 1,600 at it.
IMAGE_PATCH = 28
IMAGE_FRAMING = 2  # the tokens that open and close an image
LARGEST_IMAGE_SIDE = 4096  # the API's limit: an image whose size cannot be read counts as this big
# An English word and the space after it average about six bytes: two tokens by the estimate above.
TOKENS_PER_WORD = 2


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


def words(tokens: int) -> int:
    """About how many words of English `tokens` estimated tokens hold."""
    return max(0, tokens) // TOKENS_PER_WORD


class NoRoom(ValueError):
    """The system prompt, the newest message and the shortest useful answer do not fit in the room."""

    def __init__(self, *, needed: int, room: int, message_tokens: int) -> None:
        super().__init__(f"needs {needed:,} tokens, has {room:,}")
        self.needed = needed  # the least that must fit: system prompt, newest message, shortest answer
        self.room = room
        self.message_tokens = message_tokens  # the newest message alone


class InputTooLong(UserError):
    """The newest message cannot fit a limit however the rest is cut: `str()` says so, in words."""

    def __init__(self, limit: str, no_room: NoRoom) -> None:
        # `limit` names what the message is too long for: "Llama-3.3-70B-Instruct", "your daily budget".
        most = no_room.room - no_room.needed + no_room.message_tokens  # room for the message itself
        super().__init__(
            f"That message is too long for {limit}: it is about {words(no_room.message_tokens):,} words, and "
            f"{limit} has room for about {words(most):,} words ({no_room.room:,} tokens, a short answer "
            "included). Please shorten it or send it in parts."
        )
        self.limit = limit


@dataclass(frozen=True)
class Fitted:
    """A conversation cut to fit: the messages to send, the answer's room, and how many turns were left out."""

    messages: list[Message]
    max_tokens: int
    dropped: int

    @property
    def tokens(self) -> int:
        """What the call may use at most: the prompt's estimate plus the answer's room."""
        return estimate_message_tokens(self.messages) + self.max_tokens


def fit(messages: Sequence[Message], room: int, max_tokens: int, min_answer: int) -> Fitted:
    """Cut a conversation to `room` tokens, its answer included.

    The system messages at the start (the prompt, a channel's instructions) and the newest message
    always stay. The answer gets up to
    `max_tokens` of what is left, and never less than `min_answer` (else `NoRoom`); the history gets
    the rest, newest turns first. Raises `NoRoom` when even that minimum does not fit.
    """
    system = list(itertools.takewhile(lambda m: m.get("role") == "system", messages[:-1]))
    history = list(messages[len(system) : -1])
    newest = list(messages[-1:])
    fixed = estimate_message_tokens(system + newest)
    answer = min(max_tokens, room - fixed)
    if answer < min_answer:
        raise NoRoom(needed=fixed + min_answer, room=room, message_tokens=estimate_message_tokens(newest))
    left = room - fixed - answer
    kept: list[Message] = []
    for message in reversed(history):
        cost = estimate_message_tokens([message])
        if cost > left:
            break
        kept.append(message)
        left -= cost
    kept.reverse()
    # A conversation should not start with an orphaned assistant turn.
    while kept and kept[0].get("role") == "assistant":
        kept.pop(0)
    return Fitted(system + kept + newest, answer, len(history) - len(kept))
