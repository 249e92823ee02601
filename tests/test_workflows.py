"""Workflow results in every documented shape become the same typed values; error bodies read defensively."""

from __future__ import annotations

import email.utils
import time

import pytest

from core.client import _retry_after, describe_error_body, strip_reasoning
from core.errors import UnexpectedResponseError
from core.workflows import Classification, Entities, Moderation, Sentiment, Summary, normalise_result, workflow_body


def test_summary_from_an_object_a_string_and_json_in_a_string():
    assert normalise_result("summarize_text", {"summary": "S", "key_points": ["a", " ", "b"]}, {}) == Summary("S", ("a", "b"))
    assert normalise_result("summarize_text", "Just text", {}) == Summary("Just text", ())
    assert normalise_result("summarize_text", '{"summary": "S", "key_points": "one"}', {}) == Summary("S", ("one",))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0.91, Sentiment("positive", 0.91)),
        (0.1, Sentiment("negative", 0.1)),
        (0.5, Sentiment("neutral", 0.5)),
        (1.7, Sentiment("positive", 1.0)),
        ("0.2", Sentiment("negative", 0.2)),
        ({"sentiment": "Negative", "confidence": 0.8}, Sentiment("negative", 0.8)),
        ("positive", Sentiment("positive", 1.0)),
    ],
)
def test_sentiment_as_a_score_or_a_label(raw, expected):
    assert normalise_result("sentiment", raw, {}) == expected


def test_entities_keep_only_found_kinds_without_duplicates():
    raw = {"persons": ["Ada", "Ada", {"name": "Charles"}], "locations": [], "dates": "1833"}
    assert normalise_result("extract_categorized_entities", raw, {}) == Entities(
        {"persons": ("Ada", "Charles"), "dates": ("1833",)}
    )


def test_moderation_flags_scores_at_or_over_the_threshold():
    result = normalise_result(
        "moderation", {"scores": {"hate_speech": 0.7, "harassment": 0.5, "self_harm": 0.1}}, {"threshold": 0.5}
    )
    assert isinstance(result, Moderation) and result.flagged == ["hate_speech", "harassment"]


def test_classification_from_a_string_an_object_or_a_list():
    args = {"classify_by": ["a", "b"]}
    for raw in ("b", {"classification": "b"}, ["b"]):
        assert normalise_result("classify", raw, args) == Classification("b", ("a", "b"))


@pytest.mark.parametrize(
    ("task", "raw"), [("summarize_text", 42), ("sentiment", [1]), ("moderation", {"x": "high"}), ("classify", "")]
)
def test_unreadable_results_raise_a_named_error(task, raw):
    args = {"classify_by": ["a", "b"], "threshold": 0.5}
    with pytest.raises(UnexpectedResponseError):
        normalise_result(task, raw, args)


def test_workflow_body_names_the_agent_and_checks_required_args():
    body = workflow_body("classify", "t", {"classify_by": ["a", "b"]})
    assert body == {"text": "t", "agent_names": ["classification_agent"], "args": {"type": "classify", "classify_by": ["a", "b"]}}
    with pytest.raises(ValueError, match="classify_by"):
        workflow_body("classify", "t", {})
    with pytest.raises(ValueError, match="unknown"):
        workflow_body("reasoning_step", "t", {})


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ('{"detail": "Model not found"}', "application/json", "Model not found"),
        (
            '{"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}',
            "application/json",
            "body.messages: field required",
        ),
        ('{"message": "too long"}', "application/json", "too long"),
        ('{"error": {"message": "quota spent"}}', "application/json", "quota spent"),
        ("<html><head><title>502 Bad Gateway</title></head></html>", "text/html", "HTML error page: 502 Bad Gateway"),
        ("plain words", "text/plain", "plain words"),
        ("", "text/plain", "HTTP 500 with an empty body"),
    ],
)
def test_error_bodies_are_read_defensively(body, content_type, expected):
    assert describe_error_body(500, body, content_type) == expected


def test_long_error_bodies_are_cut_short():
    assert len(describe_error_body(500, "x" * 5000)) <= 300


def test_retry_after_in_seconds_or_as_a_date():
    assert _retry_after("2.5") == 2.5
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = _retry_after(when)
    assert wait is not None and 25 < wait <= 30
    assert _retry_after("soon") is None
    assert _retry_after(None) is None


def test_reasoning_block_is_stripped_from_content():
    assert strip_reasoning("<think>hmm\nmaybe</think>\n\nParis.") == "Paris."
    assert strip_reasoning("Paris <think> is </think>") == "Paris <think> is </think>"
