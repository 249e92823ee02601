"""`/agents`, `/workflows/schema` and `/workflows/run`: the predefined agents, each with a small deterministic task."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulator.errors import field_error, is_int, missing, require_object, unprocessable

AGENTS = {
    "summary_agent": ("Summary Agent", "Condenses a text into a short summary and its key points."),
    "sentiment_analysis_agent": ("Sentiment Analysis Agent", "Rates how positive a text is, from 0 to 1."),
    "extractor": ("Extractor", "Finds the people, organisations, places, dates and events a text names."),
    "translation_agent": ("Translation Agent", "Translates a text into the language you name."),
    "classification_agent": ("Classification Agent", "Picks the label that fits a text best from your list."),
    "moderation_agent": ("Moderation Agent", "Scores a text for six kinds of harmful content, from 0 to 1."),
    "reasoning_agent": ("Reasoning Agent", "Works through a problem step by step and states the answer."),
    "custom_agent": ("Custom Agent", "Follows the name, objective and instructions you give it."),
}


@dataclass(frozen=True)
class ArgKind:
    """What one workflow argument accepts: its JSON Schema, the same check in Python, and the 422 error."""

    schema: dict[str, Any]
    accepts: Callable[[Any], bool]
    message: str
    error_type: str


POSITIVE_INT = ArgKind(
    {"type": "integer", "minimum": 1}, lambda v: is_int(v) and v >= 1, "Input should be an integer of at least 1", "int_type"
)
TEXT = ArgKind(
    {"type": "string", "minLength": 1},
    lambda v: isinstance(v, str) and bool(v.strip()),
    "Input should be a non-empty string",
    "string_type",
)
LABELS = ArgKind(
    {"type": "array", "items": {"type": "string"}, "minItems": 1},
    lambda v: isinstance(v, list) and bool(v) and all(isinstance(label, str) for label in v),
    "Input should be a non-empty list of strings",
    "list_type",
)
FRACTION = ArgKind(
    {"type": "number", "minimum": 0, "maximum": 1},
    lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1,
    "Input should be a number between 0 and 1",
    "float_type",
)
OBJECT = ArgKind({"type": "object"}, lambda v: isinstance(v, dict), "Input should be a valid dictionary", "dict_type")

# Each task's arguments besides "type": name -> (kind, required).
TASKS: dict[str, dict[str, tuple[ArgKind, bool]]] = {
    "summarize_text": {"max_words": (POSITIVE_INT, False)},
    "sentiment": {},
    "extract_categorized_entities": {},
    "translate_text": {"target_language": (TEXT, True)},
    "classify": {"classify_by": (LABELS, True)},
    "moderation": {"threshold": (FRACTION, True)},
    "solve_with_reasoning": {},
    "custom": {"name": (TEXT, True), "objective": (TEXT, True), "instructions": (TEXT, True), "context": (OBJECT, False)},
}


def _build_workflow_schema() -> dict[str, Any]:
    variants = [
        {
            "title": task,
            "type": "object",
            "properties": {"type": {"const": task}, **{name: kind.schema for name, (kind, _) in args.items()}},
            "required": ["type", *(name for name, (_, required) in args.items() if required)],
        }
        for task, args in TASKS.items()
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "WorkflowRunRequest",
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "The input text (deprecated name of objective)."},
            "objective": {"type": "string", "description": "The input text."},
            "agent_names": {"type": "array", "items": {"type": "string", "enum": list(AGENTS)}},
            "args": {"oneOf": variants, "discriminator": {"propertyName": "type"}},
        },
        "required": ["args"],
        "anyOf": [{"required": ["text"]}, {"required": ["objective"]}],
    }


WORKFLOW_SCHEMA = _build_workflow_schema()


def agents_listing() -> dict[str, Any]:
    """The `/agents` answer: each agent under its key, in the API's shape."""
    metadata = {"image_url": None, "tags": ["text"]}
    agents = {
        key: {"name": name, "description": description, "persona": None, "metadata": metadata}
        for key, (name, description) in AGENTS.items()
    }
    return {"agents": agents}


async def run_workflow(body: Any, answer_delay: float) -> dict[str, Any]:
    """The `/workflows/run` answer: the task's result for a valid body, after `answer_delay` seconds."""
    text, args = _validate_workflow(body)
    await asyncio.sleep(answer_delay)
    return {"result": TASK_RUNNERS[args["type"]](text, args)}


def _validate_workflow(body: Any) -> tuple[str, dict[str, Any]]:
    """The input text and the args of a valid run body; 422 otherwise."""
    require_object(body)
    errors: list[dict[str, Any]] = []
    text = body["text"] if "text" in body else body.get("objective")
    if text is None:
        errors.append(missing(["body", "text"]))
    elif not isinstance(text, str):
        errors.append(field_error(["body", "text"], "Input should be a valid string", "string_type"))
    names = body.get("agent_names", [])
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        errors.append(field_error(["body", "agent_names"], "Input should be a valid list of strings", "list_type"))
    args = body.get("args")
    if args is None:
        errors.append(missing(["body", "args"]))
    elif not isinstance(args, dict):
        errors.append(field_error(["body", "args"], "Input should be a valid dictionary", "dict_type"))
    elif args.get("type") not in TASKS:
        expected = ", ".join(f"'{task}'" for task in TASKS)
        errors.append(
            field_error(
                ["body", "args"],
                f"Input tag {args.get('type')!r} found using 'type' does not match any of the expected tags: {expected}",
                "union_tag_invalid",
            )
        )
    else:
        task = args["type"]
        for name, (kind, required) in TASKS[task].items():
            loc: list[str | int] = ["body", "args", task, name]
            if name not in args:
                if required:
                    errors.append(missing(loc))
            elif not kind.accepts(args[name]):
                errors.append(field_error(loc, kind.message, kind.error_type))
    if errors:
        raise unprocessable(errors)
    return text, args


def _sentences(text: str) -> list[str]:
    return [sentence for sentence in re.split(r"(?<=[.!?])\s+", text.strip()) if sentence]


def _summarize(text: str, args: dict[str, Any]) -> dict[str, Any]:
    max_words = args.get("max_words", 100)
    words = text.split()
    summary = " ".join(words[:max_words]) + ("..." if len(words) > max_words else "")
    return {"summary": summary, "key_points": _sentences(text)[:3]}


POSITIVE_WORDS = frozenset(
    "good great excellent love loved happy wonderful amazing fantastic best like pleased awesome "
    "thanks thank glad nice perfect enjoy enjoyed helpful brilliant".split()
)
NEGATIVE_WORDS = frozenset(
    "bad terrible awful hate hated sad worst poor horrible angry disappointed disappointing broken "
    "fail failed useless wrong annoying slow ugly".split()
)


def _sentiment(text: str, _args: dict[str, Any]) -> float:
    """0.5 for neutral text, moving towards 1 or 0 with each positive or negative word."""
    words = re.findall(r"[a-z']+", text.lower())
    positive = sum(word in POSITIVE_WORDS for word in words)
    negative = sum(word in NEGATIVE_WORDS for word in words)
    return round(0.5 + 0.5 * (positive - negative) / (positive + negative + 1), 2)


MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
DAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
DATE = re.compile(rf"\b(?:(?:{MONTHS})(?:\s+\d{{1,2}}(?:st|nd|rd|th)?)?(?:,?\s+\d{{4}})?|{DAYS}|(?:1[89]|20)\d\d)\b")
CAPITALISED_RUN = re.compile(r"[A-Z][\w'&-]*(?:[ \t]+[A-Z][\w'&-]*)*")
ORGANIZATION_ENDINGS = frozenset({"Inc", "Corp", "Ltd", "University", "Foundation"})
EVENT_ENDINGS = frozenset({"Conference", "Summit", "Festival", "Expo", "Olympics", "Championship"})
PLACE_PREPOSITIONS = frozenset({"in", "at", "from"})
# Capitalised words that start sentences without naming anything.
LEADING_WORDS = frozenset(
    "A An The In At From On Of For With After Before During When While If And But So Yesterday Today "
    "Tomorrow This That These Those I We You He She It They My Our Your His Her Their".split()
)


def _entities(text: str, _args: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {key: [] for key in ("persons", "organizations", "locations", "dates", "events")}

    def add(key: str, value: str) -> None:
        if value not in found[key]:
            found[key].append(value)

    for match in DATE.finditer(text):
        add("dates", match.group())
    rest = DATE.sub(";", text)  # dates must not run into the names beside them
    for match in CAPITALISED_RUN.finditer(rest):
        # The words just before the run (a short window keeps long texts linear).
        before = re.findall(r"[\w']+|[.!?]", rest[max(0, match.start() - 40) : match.start()])
        at_sentence_start = not before or before[-1] in ".!?"
        words = match.group().split()
        while words and words[0] in LEADING_WORDS:
            before.append(words.pop(0))
            at_sentence_start = False
        if not words:
            continue
        name = " ".join(words)
        if words[-1] in ORGANIZATION_ENDINGS:
            add("organizations", name)
        elif words[-1] in EVENT_ENDINGS:
            add("events", name)
        elif before and before[-1].lower() in PLACE_PREPOSITIONS:
            add("locations", name)
        elif not at_sentence_start:
            add("persons", name)
    return {key: values for key, values in found.items() if values}


def _translate(text: str, args: dict[str, Any]) -> str:
    return f"[{args['target_language']}] {text}"


def _classify(text: str, args: dict[str, Any]) -> str:
    labels = args["classify_by"]
    lowered = text.lower()
    return next((label for label in labels if label.lower() in lowered), labels[0])


MODERATION_WORDS = {
    "extreme_profanity": ("fuck", "fucking", "motherfucker", "shit", "cunt"),
    "sexually_explicit": ("porn", "nude", "nudes", "nsfw", "sex"),
    "hate_speech": ("subhuman", "vermin", "inferior race", "exterminate"),
    "harassment": ("idiot", "stupid", "loser", "worthless", "pathetic"),
    "self_harm": ("suicide", "kill myself", "self-harm", "end my life"),
    "dangerous_content": ("bomb", "explosive", "nerve agent", "build a weapon"),
}
MODERATION_PATTERNS = {
    category: re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
    for category, words in MODERATION_WORDS.items()
}


def _moderate(text: str, _args: dict[str, Any]) -> dict[str, float]:
    """0.02 for clean text; each keyword of a category adds 0.6, up to 0.99."""
    return {
        category: round(min(0.99, 0.02 + 0.6 * len(pattern.findall(text))), 2)
        for category, pattern in MODERATION_PATTERNS.items()
    }


def _solve(text: str, _args: dict[str, Any]) -> str:
    return "\n".join(
        (
            f'1. Restate the problem: "{text}"',
            "2. Split it into smaller steps and work through each one in order.",
            "3. Check the result against what the problem asks for.",
            f"Answer: the emulated solution to a problem of {len(text.split())} words.",
        )
    )


def _custom(text: str, args: dict[str, Any]) -> str:
    return f'{args["name"]} ({args["objective"]}), following "{args["instructions"]}": emulated result for "{text}".'


TASK_RUNNERS: dict[str, Callable[[str, dict[str, Any]], Any]] = {
    "summarize_text": _summarize,
    "sentiment": _sentiment,
    "extract_categorized_entities": _entities,
    "translate_text": _translate,
    "classify": _classify,
    "moderation": _moderate,
    "solve_with_reasoning": _solve,
    "custom": _custom,
}
