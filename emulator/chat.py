"""`/chat/completions`: the request checked as the API checks it, and a made-up answer with realistic token counts."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
import re
import time
import uuid
from typing import Any

from PIL import Image, UnidentifiedImageError

from core.quotas import ModelLimits, QuotaTable
from emulator.errors import ApiError, context_error, field_error, is_int, missing, require_object, unprocessable

MAX_IMAGES = 10
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_SIDE = 4096
IMAGE_FORMATS = {"JPEG", "PNG", "WEBP", "GIF"}
TOKENS_PER_MESSAGE = 4
TOKENS_PER_IMAGE = 1_000
CHARS_PER_TOKEN = 4
MAX_LONG_ANSWER = 50_000


async def answer_chat(body: Any, quotas: QuotaTable, answer_delay: float) -> dict[str, Any] | list[dict[str, Any]]:
    """The completion for a chat request, or the chunks to stream when it asks for a stream."""
    _validate_chat(body)
    limits = quotas.get(body["model"])
    if limits is None or limits.kind != "chat":
        raise ApiError(404, f"Model '{body['model']}' not found")
    messages = body["messages"]
    urls = [url for message in messages for url in _image_urls(message["content"])]
    if len(urls) > MAX_IMAGES:
        raise ApiError(400, f"At most {MAX_IMAGES} images per request")
    seen = await asyncio.to_thread(_describe_images, urls) if urls else []
    prompt_tokens = sum(_message_tokens(message) for message in messages)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    if prompt_tokens + (max_tokens or 0) > limits.context_tokens:
        raise context_error(limits.context_tokens, prompt_tokens, max_tokens or 0)
    await asyncio.sleep(answer_delay)

    question, earlier = _last_question(messages)
    answer = _compose_answer(limits, question, earlier, seen)
    reasoning = _reasoning(question, earlier) if REASONING_MODEL.search(limits.name) else None
    finish_reason = "stop"
    if max_tokens is not None and _tokens(answer) > max_tokens:
        answer, finish_reason = answer[: max_tokens * CHARS_PER_TOKEN], "length"
    completion_tokens = _tokens(answer)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": limits.name,
    }
    if body.get("stream"):
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return _stream_chunks(head, reasoning, answer, finish_reason, usage if wants_usage else None)
    message = {"role": "assistant", "content": answer}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {**head, "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}], "usage": usage}


ROLES = ("system", "user", "assistant")


def _validate_chat(body: Any) -> None:
    require_object(body)
    errors: list[dict[str, Any]] = []
    if "model" not in body:
        errors.append(missing(["body", "model"]))
    elif not isinstance(body["model"], str):
        errors.append(field_error(["body", "model"], "Input should be a valid string", "string_type"))
    messages = body.get("messages")
    if "messages" not in body:
        errors.append(missing(["body", "messages"]))
    elif not isinstance(messages, list):
        errors.append(field_error(["body", "messages"], "Input should be a valid list", "list_type"))
    elif not messages:
        errors.append(field_error(["body", "messages"], "List should have at least 1 item after validation, not 0", "too_short"))
    else:
        for index, message in enumerate(messages):
            errors += _message_errors(message, ["body", "messages", index])
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and not (is_int(value) and value >= 1):
            errors.append(field_error(["body", key], "Input should be an integer of at least 1", "int_type"))
    if not isinstance(body.get("stream", False), bool):
        errors.append(field_error(["body", "stream"], "Input should be a valid boolean", "bool_type"))
    if not isinstance(body.get("stream_options") or {}, dict):
        errors.append(field_error(["body", "stream_options"], "Input should be a valid dictionary", "dict_type"))
    if errors:
        raise unprocessable(errors)


def _message_errors(message: Any, loc: list[str | int]) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        return [field_error(loc, "Input should be a valid dictionary", "dict_type")]
    errors = []
    if "role" not in message:
        errors.append(missing([*loc, "role"]))
    elif message["role"] not in ROLES:
        errors.append(field_error([*loc, "role"], "Input should be 'system', 'user' or 'assistant'", "literal_error"))
    content = message.get("content")
    if "content" not in message:
        errors.append(missing([*loc, "content"]))
    elif isinstance(content, list):
        expected = "Input should be a text part or an image_url part"
        errors += [
            field_error([*loc, "content", index], expected, "union_tag_invalid")
            for index, part in enumerate(content)
            if not _is_valid_part(part)
        ]
    elif not isinstance(content, str):
        errors.append(field_error([*loc, "content"], "Input should be a valid string or list", "string_type"))
    return errors


def _is_valid_part(part: Any) -> bool:
    """`{"type": "text", "text": str}` or `{"type": "image_url", "image_url": {"url": str}}`."""
    if not isinstance(part, dict):
        return False
    if part.get("type") == "text":
        return isinstance(part.get("text"), str)
    image = part.get("image_url")
    return part.get("type") == "image_url" and isinstance(image, dict) and isinstance(image.get("url"), str)


REASONING_MODEL = re.compile(r"DeepSeek-R1|QwQ")
LONG_DIRECTIVE = re.compile(r"emulate:long=(\d+)")
DATA_URL = re.compile(r"data:image/(?:jpeg|png|webp|gif);base64,(.*)", re.DOTALL)

# The ~30-line code block in the middle of an `emulate:long` answer.
CODE_BLOCK = (
    "```python\n"
    "def emulated_total() -> int:\n"
    '    """Add up one to twenty-six, one line at a time."""\n'
    "    total = 0\n" + "".join(f"    total += {n}\n" for n in range(1, 27)) + "    return total\n"
    "```"
)
FILLER = (
    "This paragraph comes from the IO Intelligence emulator, which writes long answers on request.",
    "Chat adapters use it to check that a long reply is split cleanly into several messages.",
    "No sentence here carries meaning beyond its length, and every run produces the same text.",
    "A real model would answer the question instead, at a similar length and with similar structure.",
)


def _text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if part["type"] == "text")


def _image_urls(content: str | list[dict[str, Any]]) -> list[str]:
    if isinstance(content, str):
        return []
    return [part["image_url"]["url"] for part in content if part["type"] == "image_url"]


def _tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _message_tokens(message: dict[str, Any]) -> int:
    content = message["content"]
    return TOKENS_PER_MESSAGE + _tokens(_text(content)) + TOKENS_PER_IMAGE * len(_image_urls(content))


def _describe_images(urls: list[str]) -> list[str]:
    """One line per image, checked as the API checks them (400 on the first bad one)."""
    return [f"Image {number}: {_describe_image(url)}" for number, url in enumerate(urls, start=1)]


def _describe_image(url: str) -> str:
    if url.startswith(("http://", "https://")):
        return "(linked image)"
    match = DATA_URL.fullmatch(url)
    if match is None:
        raise _invalid_image("expected an http(s) URL or a data:image/<jpeg|png|webp|gif>;base64 URL")
    try:
        data = base64.b64decode(match.group(1), validate=True)
    except binascii.Error:
        raise _invalid_image("the base64 data does not decode") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise _invalid_image("larger than 20 MB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
                raise _invalid_image(f"{width}x{height} pixels is over the {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} limit")
            if image.format not in IMAGE_FORMATS:
                raise _invalid_image(f"{image.format} is not JPEG, PNG, WEBP or GIF")
            image.load()  # corrupt or truncated pixel data fails here, not at open
            return f"{image.format}, {width}x{height} pixels."
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError):
        raise _invalid_image("the data is not a readable image") from None


def _invalid_image(why: str) -> ApiError:
    return ApiError(400, f"Invalid image: {why}")


def _last_question(messages: list[dict[str, Any]]) -> tuple[str, int]:
    """The text of the last user message, and how many messages came before it."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "user":
            return _text(messages[index]["content"]), index
    return "", len(messages)


def _compose_answer(limits: ModelLimits, question: str, earlier: int, seen: list[str]) -> str:
    long = LONG_DIRECTIVE.search(question)
    if long:
        answer = _long_answer(min(int(long.group(1)), MAX_LONG_ANSWER))
    else:
        model = limits.name.rsplit("/", 1)[-1]
        asked = f'you asked "{question}"' if question else "you sent no text"
        answer = f"Emulated answer from {model}: {asked}. {_history(earlier)}"
    if not seen:
        return answer
    if not limits.images:
        return "I'm a text-only model, so I can't see images. Describe the image in words and I can help. " + answer
    return " ".join(seen) + "\n\n" + answer


def _history(earlier: int) -> str:
    if earlier == 0:
        return "This is the first message of the conversation."
    return f"The conversation had {earlier} earlier message{'s' if earlier != 1 else ''}."


def _long_answer(size: int) -> str:
    """About `size` characters of paragraphs with a fenced code block in the middle."""
    half = max(0, size - len(CODE_BLOCK) - 4) // 2
    return "\n\n".join(part for part in (_prose(half), CODE_BLOCK, _prose(half)) if part)


def _prose(size: int) -> str:
    sentences: list[str] = []
    length = 0
    while length < size:
        sentence = FILLER[len(sentences) % len(FILLER)]
        sentences.append(sentence)
        length += len(sentence) + 1
    paragraphs = [" ".join(sentences[start : start + 3]) for start in range(0, len(sentences), 3)]
    return "\n\n".join(paragraphs)


def _reasoning(question: str, earlier: int) -> str:
    return f'The user asks: "{question}". {_history(earlier)} A short, direct answer that repeats the question will do.'


def _stream_chunks(
    head: dict[str, Any], reasoning: str | None, answer: str, finish_reason: str, usage: dict[str, int] | None
) -> list[dict[str, Any]]:
    """The chunks vLLM streams: role, reasoning pieces, content pieces, finish, then usage if asked."""
    head = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"reasoning_content": piece}) for piece in _pieces(reasoning or "")]
    chunks += [chunk({"content": piece}) for piece in _pieces(answer)]
    chunks.append(chunk({}, finish_reason))
    if usage is not None:
        chunks.append({**head, "choices": [], "usage": usage})
    return chunks


def _pieces(text: str, words: int = 3) -> list[str]:
    """Runs of a few words that join back into exactly `text`."""
    if not text:
        return []
    tokens = re.split(r"(?<=\s)(?=\S)", text)
    return ["".join(tokens[start : start + words]) for start in range(0, len(tokens), words)]
