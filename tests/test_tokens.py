"""Offline token estimates err high; a conversation is cut, oldest turns first, to fit a number of tokens."""

from __future__ import annotations

import math
import re
from typing import Literal

import pytest

from core.client import Message
from core.tokens import InputTooLong, NoRoom, estimate_message_tokens, estimate_text_tokens, fit


def test_estimates_are_at_least_a_realistic_count():
    text = "The quick brown fox jumps over the lazy dog. " * 50
    assert estimate_text_tokens(text) >= math.ceil(len(text) / 4)
    assert estimate_text_tokens("日本語のテキスト") >= 8  # multi-byte text is not undercounted
    image_message = {
        "role": "user",
        "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}],
    }
    assert estimate_message_tokens([image_message]) > 1000


def turn(role: Literal["user", "assistant"], words: int) -> Message:
    return {"role": role, "content": "word " * words}


def test_history_is_trimmed_oldest_first():
    system: Message = {"role": "system", "content": "be brief"}
    newest = turn("user", 10)
    history = [turn("user", 300), turn("assistant", 300), turn("user", 300), turn("assistant", 300)]
    messages = [system, *history, newest]
    cost_of_two = estimate_message_tokens(history[2:])
    room = estimate_message_tokens([system, newest]) + 100 + cost_of_two
    fitted = fit(messages, room, 100, 50)
    assert fitted.messages == [system, history[2], history[3], newest]
    assert (fitted.max_tokens, fitted.dropped) == (100, 2)
    assert fitted.tokens <= room


def test_nothing_is_dropped_when_it_fits():
    messages: list[Message] = [{"role": "system", "content": "s"}, turn("user", 5), turn("assistant", 5), turn("user", 5)]
    fitted = fit(messages, 100_000, 1000, 256)
    assert (fitted.messages, fitted.max_tokens, fitted.dropped) == (messages, 1000, 0)


def test_no_orphaned_assistant_turn_at_the_start():
    system: Message = {"role": "system", "content": "s"}
    newest = turn("user", 5)
    history = [turn("user", 500), turn("assistant", 10)]
    room = estimate_message_tokens([system, newest, history[1]]) + 10
    fitted = fit([system, *history, newest], room, 10, 10)
    assert fitted.messages == [system, newest] and fitted.dropped == 2


def test_a_small_room_shrinks_the_answer_before_refusing():
    system: Message = {"role": "system", "content": "s"}
    newest = turn("user", 20)
    fixed = estimate_message_tokens([system, newest])
    history = [turn("user", 50), turn("assistant", 50)]
    fitted = fit([system, *history, newest], fixed + 300, 1024, 256)
    assert fitted.max_tokens == 300 and fitted.messages == [system, newest], "the answer's room comes before the history"
    assert fitted.tokens == fixed + 300
    with pytest.raises(NoRoom) as caught:
        fit([system, newest], fixed + 255, 1024, 256)
    assert caught.value.needed == fixed + 256 and caught.value.room == fixed + 255


def test_a_message_that_alone_cannot_fit_is_too_long_in_words():
    text = "Please review the attached quarterly report and summarise the findings. " * 500  # 5,000 words
    with pytest.raises(NoRoom) as caught:
        fit([{"role": "system", "content": "s"}, {"role": "user", "content": text}], 4000, 1024, 256)
    said = str(InputTooLong("AceMath-7B-Instruct", caught.value))
    written, most = (int(n.replace(",", "")) for n in re.findall(r"about ([\d,]+) words", said))
    assert said.startswith("That message is too long for AceMath-7B-Instruct: it is about")
    assert 4_500 <= written <= 6_500, "the message's length, in words"
    assert 1_600 <= most <= 2_000 and "4,000 tokens" in said, "the model's limit, in words, less a short answer"
