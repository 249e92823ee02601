"""Offline token estimates err high; history is trimmed oldest first to fit the context length."""

from __future__ import annotations

import math

import pytest

from core.tokens import InputTooLong, estimate_message_tokens, estimate_text_tokens, fit_to_context


def test_estimates_are_at_least_a_realistic_count():
    text = "The quick brown fox jumps over the lazy dog. " * 50
    assert estimate_text_tokens(text) >= math.ceil(len(text) / 4)
    assert estimate_text_tokens("日本語のテキスト") >= 8  # multi-byte text is not undercounted
    image_message = {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}
    assert estimate_message_tokens([image_message]) > 1000


def turn(role: str, words: int) -> dict:
    return {"role": role, "content": "word " * words}


def test_history_is_trimmed_oldest_first():
    system, newest = {"role": "system", "content": "be brief"}, turn("user", 10)
    history = [turn("user", 300), turn("assistant", 300), turn("user", 300), turn("assistant", 300)]
    messages = [system, *history, newest]
    cost_of_two = estimate_message_tokens(history[2:])
    limit = estimate_message_tokens([system, newest]) + 100 + cost_of_two
    fitted = fit_to_context(messages, limit, 100, "m")
    assert fitted == [system, history[2], history[3], newest]
    assert estimate_message_tokens(fitted) + 100 <= limit


def test_nothing_is_dropped_when_it_fits():
    messages = [{"role": "system", "content": "s"}, turn("user", 5), turn("assistant", 5), turn("user", 5)]
    assert fit_to_context(messages, 100_000, 1000, "m") == messages


def test_no_orphaned_assistant_turn_at_the_start():
    system, newest = {"role": "system", "content": "s"}, turn("user", 5)
    history = [turn("user", 500), turn("assistant", 10)]
    limit = estimate_message_tokens([system, newest, history[1]]) + 10
    assert fit_to_context([system, *history, newest], limit, 10, "m") == [system, newest]


def test_a_message_that_alone_cannot_fit_names_the_limit():
    with pytest.raises(InputTooLong) as caught:
        fit_to_context([{"role": "system", "content": "s"}, turn("user", 5000)], 4000, 1024, "nvidia/AceMath-7B-Instruct")
    assert "4,000" in str(caught.value) and "AceMath-7B-Instruct" in str(caught.value)
