"""Long answers split into valid messages (streaming them is tested in test_delivery.py)."""

from __future__ import annotations

import pytest

from core.chunks import shorten, split_message

CODE = "```python\n" + "\n".join(f"print('line {i}')  # a comment to make it longer" for i in range(60)) + "\n```"
ANSWER = "Intro paragraph. " * 40 + "\n\n" + CODE + "\n\n" + "Closing words. " * 80


def fences_balanced(piece: str) -> bool:
    return sum(1 for line in piece.split("\n") if line.strip().startswith("```")) % 2 == 0


@pytest.mark.parametrize("limit", [200, 2000, 3900])
def test_pieces_fit_the_limit_and_code_blocks_stay_valid(limit):
    pieces = split_message(ANSWER, limit)
    assert len(pieces) > 1
    assert all(len(piece) <= limit for piece in pieces)
    assert all(fences_balanced(piece) for piece in pieces)
    code_pieces = [piece for piece in pieces if "print(" in piece]
    assert all("```python" in piece for piece in code_pieces), "a cut block reopens with its language"


def test_nothing_is_lost_but_the_added_fences():
    pieces = split_message(ANSWER, 500)
    rejoined = "\n".join(pieces)
    for line in ANSWER.split("\n"):
        for word in line.split():
            assert word in rejoined
    assert sum(piece.count("print(") for piece in pieces) == 60


def test_short_text_is_one_piece_and_a_long_line_is_cut_at_spaces():
    assert split_message("hello", 2000) == ["hello"]
    pieces = split_message("word " * 1000, 2000)
    assert all(len(piece) <= 2000 for piece in pieces) and all(not piece.startswith(" ") for piece in pieces)
    assert sum(piece.count("word") for piece in pieces) == 1000
    assert all(len(piece) <= 300 for piece in split_message("x" * 1000, 300)), "a line without spaces is cut hard"


def test_long_text_is_cut_with_an_ellipsis_within_the_limit():
    assert shorten("short", 10) == "short"
    assert shorten("exactly10!", 10) == "exactly10!"
    assert shorten("a bit too long", 10) == "a bit too…" and len(shorten("a bit too long", 10)) == 10
