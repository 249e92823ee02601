"""The API's predefined agent tasks (`POST /workflows/run`) and their results as typed values.

The API's `result` is untyped JSON whose shape varies between versions; each task has one
normaliser here that accepts every documented shape and raises `UnexpectedResponseError` otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UnexpectedResponseError


@dataclass(frozen=True)
class Summary:
    summary: str
    key_points: tuple[str, ...]


@dataclass(frozen=True)
class Sentiment:
    label: str  # "positive", "neutral" or "negative"
    score: float  # 0 (negative) .. 1 (positive), or the API's confidence in `label`


@dataclass(frozen=True)
class Entities:
    groups: dict[str, tuple[str, ...]]  # kind -> names, only kinds that were found


@dataclass(frozen=True)
class Moderation:
    scores: dict[str, float]
    threshold: float

    @property
    def flagged(self) -> list[str]:
        return [name for name, score in self.scores.items() if score >= self.threshold]


@dataclass(frozen=True)
class Translation:
    text: str
    language: str


@dataclass(frozen=True)
class Classification:
    label: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class CustomResult:
    text: str


WorkflowResult = Summary | Sentiment | Entities | Moderation | Translation | Classification | Reasoning | CustomResult


@dataclass(frozen=True)
class Task:
    """How to run one task type: which agent, which args are required, how to read the result."""

    type: str
    agent: str
    required_args: tuple[str, ...]
    normalise: Callable[[Any, dict[str, Any]], WorkflowResult]


def _as_json(raw: Any) -> Any:
    """Some API versions send a JSON document inside a string; unwrap it."""
    if isinstance(raw, str):
        stripped = raw.strip()
        if stripped[:1] in "{[":
            try:
                return json.loads(stripped)
            except ValueError:
                return raw
    return raw


def _text(raw: Any, *keys: str) -> str:
    """A string result, possibly wrapped in an object under one of `keys`."""
    raw = _as_json(raw)
    if isinstance(raw, dict):
        for key in keys:
            if isinstance(raw.get(key), str):
                return raw[key].strip()
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    raise UnexpectedResponseError(f"expected text, got {type(raw).__name__}")


def _summary(raw: Any, args: dict[str, Any]) -> Summary:
    raw = _as_json(raw)
    if isinstance(raw, str):
        return Summary(raw.strip(), ())
    if isinstance(raw, dict) and isinstance(raw.get("summary"), str):
        points = raw.get("key_points") or []
        if not isinstance(points, list):
            points = [points]
        return Summary(raw["summary"].strip(), tuple(str(point).strip() for point in points if str(point).strip()))
    raise UnexpectedResponseError("summary result has no 'summary'")


def sentiment_label(score: float) -> str:
    if score >= 0.6:
        return "positive"
    if score <= 0.4:
        return "negative"
    return "neutral"


def _sentiment(raw: Any, args: dict[str, Any]) -> Sentiment:
    raw = _as_json(raw)
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            return Sentiment(raw.strip().lower(), 1.0)
    if isinstance(raw, bool):
        raise UnexpectedResponseError("sentiment result is a boolean")
    if isinstance(raw, (int, float)):
        score = min(1.0, max(0.0, float(raw)))
        return Sentiment(sentiment_label(score), score)
    if isinstance(raw, dict) and isinstance(raw.get("sentiment"), str):
        confidence = raw.get("confidence", raw.get("score", 1.0))
        score = float(confidence) if isinstance(confidence, (int, float)) else 1.0
        return Sentiment(raw["sentiment"].strip().lower(), min(1.0, max(0.0, score)))
    raise UnexpectedResponseError("sentiment result is neither a score nor a label")


def _entity_name(item: Any) -> str:
    if isinstance(item, dict):
        item = item.get("name") or item.get("text") or item.get("value") or ""
    return str(item).strip()


def _entities(raw: Any, args: dict[str, Any]) -> Entities:
    raw = _as_json(raw)
    if not isinstance(raw, dict):
        raise UnexpectedResponseError("entities result is not an object")
    groups: dict[str, tuple[str, ...]] = {}
    for kind, items in raw.items():
        if not isinstance(items, list):
            items = [items]
        names = tuple(dict.fromkeys(name for name in map(_entity_name, items) if name))
        if names:
            groups[str(kind)] = names
    return Entities(groups)


def _moderation(raw: Any, args: dict[str, Any]) -> Moderation:
    raw = _as_json(raw)
    if isinstance(raw, dict) and isinstance(raw.get("scores"), dict):
        raw = raw["scores"]
    if not isinstance(raw, dict):
        raise UnexpectedResponseError("moderation result is not an object")
    scores = {
        str(name): float(value) for name, value in raw.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    if not scores:
        raise UnexpectedResponseError("moderation result has no scores")
    return Moderation(scores, float(args["threshold"]))


def _translation(raw: Any, args: dict[str, Any]) -> Translation:
    return Translation(_text(raw, "translation", "translated_text", "text"), str(args["target_language"]))


def _classification(raw: Any, args: dict[str, Any]) -> Classification:
    raw = _as_json(raw)
    if isinstance(raw, list) and raw:
        raw = raw[0]
    return Classification(_text(raw, "classification", "label", "category"), tuple(args["classify_by"]))


def _reasoning(raw: Any, args: dict[str, Any]) -> Reasoning:
    return Reasoning(_text(raw, "answer", "result", "solution"))


def _custom(raw: Any, args: dict[str, Any]) -> CustomResult:
    raw = _as_json(raw)
    return CustomResult(raw.strip() if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False))


TASKS: dict[str, Task] = {
    task.type: task
    for task in (
        Task("summarize_text", "summary_agent", (), _summary),
        Task("sentiment", "sentiment_analysis_agent", (), _sentiment),
        Task("extract_categorized_entities", "extractor", (), _entities),
        Task("translate_text", "translation_agent", ("target_language",), _translation),
        Task("classify", "classification_agent", ("classify_by",), _classification),
        Task("moderation", "moderation_agent", ("threshold",), _moderation),
        Task("solve_with_reasoning", "reasoning_agent", (), _reasoning),
        Task("custom", "custom_agent", ("name", "objective", "instructions"), _custom),
    )
}


def workflow_body(task_type: str, text: str, args: dict[str, Any]) -> dict[str, Any]:
    """The `/workflows/run` body for a task; raises ValueError for an unknown task or missing args."""
    task = TASKS.get(task_type)
    if task is None:
        raise ValueError(f"unknown workflow task {task_type!r}")
    missing = [name for name in task.required_args if args.get(name) in (None, "", [])]
    if missing:
        raise ValueError(f"task {task_type!r} needs {', '.join(missing)}")
    return {"text": text, "agent_names": [task.agent], "args": {"type": task_type, **args}}


def normalise_result(task_type: str, raw: Any, args: dict[str, Any]) -> WorkflowResult:
    return TASKS[task_type].normalise(raw, args)
