"""A local stand-in for the IO Intelligence API, for development, `iobot run --emulator` and tests.

It speaks the endpoints of io-intelligence-api.md on aiohttp with deterministic answers and realistic
token counts, so the whole service runs with no account and no network. Faults (error statuses,
Cloudflare HTML pages, slow answers, cut streams, dropped connections) are queued with `inject` or
over HTTP at `/_emulator/faults`, so a test can also drive an emulator running in another process.

A request under /api/v1 goes: record it, take a pending fault, route, check the key, validate the
body, wait `answer_delay` (chat and workflows only), answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import io
import json
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal, get_args

from aiohttp import web
from PIL import Image, UnidentifiedImageError

from core.quotas import DEFAULT_CONTEXT_LENGTH, ModelLimits, QuotaTable, load_quota_table

API_PREFIX = "/api/v1"
MAX_IMAGES = 10
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_SIDE = 4096
IMAGE_FORMATS = {"JPEG", "PNG", "WEBP", "GIF"}
TOKENS_PER_MESSAGE = 4
TOKENS_PER_IMAGE = 1_000
CHARS_PER_TOKEN = 4
MAX_LONG_ANSWER = 50_000
# Ten base64 images at the size limit, with room for the text around them.
MAX_BODY_BYTES = 2 * MAX_IMAGES * MAX_IMAGE_BYTES
# A fixed `created` keeps the OpenAI-shaped model list identical from run to run.
MODELS_CREATED = 1_735_689_600

FaultKind = Literal["status", "html", "slow", "cut_stream", "context_length", "drop"]
Reply = dict[str, Any] | list[dict[str, Any]]  # a JSON body, or the chunks of an SSE stream
Handler = Callable[[Any], Awaitable[Reply]]


@dataclass
class Fault:
    """One misbehaviour, served to the next `times` matching requests."""

    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    path: str | None = None
    model: str | None = None
    times: int = 1

    def __post_init__(self) -> None:
        if self.kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times < 1:
            raise ValueError("times must be at least 1")

    def matches(self, path: str, body: Any) -> bool:
        if self.path is not None and self.path != path:
            return False
        return self.model is None or (isinstance(body, dict) and body.get("model") == self.model)


@dataclass
class RecordedRequest:
    """One request under /api/v1 as the emulator saw it, for tests to inspect."""

    method: str
    path: str
    body: Any
    authorized: bool
    fault: str | None


# OpenAI's `error.type` for each status; other statuses are "server_error" (5xx) or "invalid_request_error".
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """An error answer, raised where it is found and sent as JSON by the dispatcher.

    Its body reads right to both kinds of client: FastAPI-style ones read `detail` (the message, or
    the list of validation errors), OpenAI-style ones `error.message` (the official `openai` client
    shows only that). `extra` adds top-level fields, such as vLLM's own.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers
        kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.body = {
            **(extra or {}),
            "detail": message if detail is None else detail,
            "error": {"message": message, "type": kind, "param": None, "code": status},
        }

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


class Emulator:
    """The IO Intelligence API on 127.0.0.1, with faults on demand and a record of every request.

    `models_shape="openai"` lists models in OpenAI's shape alone, as some deployments do; by default
    each entry carries both shapes, so that every client finds what it reads.
    """

    def __init__(
        self,
        quotas: QuotaTable | None = None,
        *,
        api_key: str | None = None,
        answer_delay: float = 0.0,
        models_shape: Literal["both", "openai"] = "both",
    ) -> None:
        self.quotas = quotas if quotas is not None else load_quota_table()
        self._api_key = api_key
        self.answer_delay = answer_delay
        self.models_shape = models_shape
        self.requests: list[RecordedRequest] = []
        self.base_url = ""  # set by start()
        self._faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._routes: dict[str, dict[str, Handler]] = {
            "/chat/completions": {"POST": self._chat},
            "/models": {"GET": self._models},
            "/agents": {"GET": self._agents},
            "/workflows/schema": {"GET": self._workflow_schema},
            "/workflows/run": {"POST": self._run_workflow},
        }

    def inject(self, *faults: Fault) -> None:
        # Copies, so that counting down `times` never changes the caller's objects.
        self._faults.extend(dataclasses.replace(fault) for fault in faults)

    def clear_faults(self) -> None:
        self._faults.clear()

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", API_PREFIX + "/{path:.*}", self._serve_api)
        app.router.add_post("/_emulator/faults", self._add_fault)
        app.router.add_delete("/_emulator/faults", self._delete_faults)
        app.router.add_get("/_emulator/requests", self._list_requests)
        app.router.add_delete("/_emulator/requests", self._delete_requests)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # A short shutdown timeout: stopping should not wait long for a slow fault still sleeping.
        self._runner = web.AppRunner(self.make_app(), shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}{API_PREFIX}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- the API -------------------------------------------------------------------------------

    async def _serve_api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        raw = await request.read()
        body, body_error = _parse_json(raw)
        auth_problem = self._auth_problem(request)
        fault = self._take_fault(path, body)
        self.requests.append(
            RecordedRequest(request.method, path, body, auth_problem is None, fault.kind if fault else None)
        )
        if fault is not None and fault.kind not in ("slow", "cut_stream"):
            return self._serve_fault(request, fault, body)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        try:
            handler = self._route(request.method, path)
            if auth_problem is not None:
                raise ApiError(401, auth_problem, headers={"WWW-Authenticate": "Bearer"})
            if body_error is not None:
                raise body_error
            reply = await handler(body)
        except ApiError as error:
            return error.response()
        cut = fault is not None and fault.kind == "cut_stream"
        if isinstance(reply, list):
            return await _send_events(request, reply, cut)
        if cut:
            return await _send_half(request, reply)
        return web.json_response(reply)

    def _route(self, method: str, path: str) -> Handler:
        methods = self._routes.get(path)
        if methods is None:
            raise ApiError(404, "Not Found")
        if method not in methods:
            raise ApiError(405, "Method Not Allowed")
        return methods[method]

    def _auth_problem(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "Not authenticated"
        if self._api_key is not None and not hmac.compare_digest(token.encode(), self._api_key.encode()):
            return "Invalid API key"
        return None

    def _take_fault(self, path: str, body: Any) -> Fault | None:
        for fault in self._faults:
            if fault.matches(path, body):
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _serve_fault(self, request: web.Request, fault: Fault, body: Any) -> web.Response:
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return ApiError(fault.status, _reason(fault.status), headers=headers).response()
        if fault.kind == "html":
            return web.Response(status=fault.status, text=_cloudflare_page(fault.status), content_type="text/html")
        if fault.kind == "context_length":
            model = body.get("model") if isinstance(body, dict) else None
            limits = self.quotas.get(model) if isinstance(model, str) else None
            limit = limits.context_tokens if limits else DEFAULT_CONTEXT_LENGTH
            return _context_error(limit, limit + 1, 0).response()
        _hang_up(request)  # "drop"
        return web.Response()

    async def _chat(self, body: Any) -> Reply:
        _validate_chat(body)
        limits = self.quotas.get(body["model"])
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
            raise _context_error(limits.context_tokens, prompt_tokens, max_tokens or 0)
        await asyncio.sleep(self.answer_delay)

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

    async def _models(self, _body: Any) -> Reply:
        """Each model in OpenAI's shape (`id`, `object`) and io.net's newer one (`name`, `metadata`) at once."""
        data = [
            {"id": row.name, "object": "model", "created": MODELS_CREATED, "owned_by": "io-intelligence"}
            for row in self.quotas
        ]
        if self.models_shape == "openai":
            return {"object": "list", "data": data}
        for entry, row in zip(data, self.quotas):
            metadata = {"context_window": row.context_tokens, "supports_images_input": row.images}
            entry.update(name=row.name, model_id=row.name, metadata=metadata)
        return {"object": "list", "data": data, "pagination": {"page": 1, "page_size": len(data), "total": len(data)}}

    async def _agents(self, _body: Any) -> Reply:
        metadata = {"image_url": None, "tags": ["text"]}
        agents = {
            key: {"name": name, "description": description, "persona": None, "metadata": metadata}
            for key, (name, description) in AGENTS.items()
        }
        return {"agents": agents}

    async def _workflow_schema(self, _body: Any) -> Reply:
        return WORKFLOW_SCHEMA

    async def _run_workflow(self, body: Any) -> Reply:
        text, args = _validate_workflow(body)
        await asyncio.sleep(self.answer_delay)
        return {"result": TASK_RUNNERS[args["type"]](text, args)}

    # --- control endpoints, without auth ---------------------------------------------------------

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault(**await request.json())
        except (ValueError, TypeError) as exc:
            return ApiError(400, f"Invalid fault: {exc}").response()
        self.inject(fault)
        return web.Response(status=204)

    async def _delete_faults(self, _request: web.Request) -> web.Response:
        self.clear_faults()
        return web.Response(status=204)

    async def _list_requests(self, _request: web.Request) -> web.Response:
        return web.json_response([dataclasses.asdict(recorded) for recorded in self.requests])

    async def _delete_requests(self, _request: web.Request) -> web.Response:
        self.requests.clear()
        return web.Response(status=204)


# --- wire helpers ----------------------------------------------------------------------------------


def _parse_json(raw: bytes) -> tuple[Any, ApiError | None]:
    """The body, or the 422 FastAPI gives for text that is not JSON."""
    if not raw:
        return None, None
    try:
        return json.loads(raw.decode("utf-8", "replace")), None
    except json.JSONDecodeError as exc:
        return None, _unprocessable([_field_error(["body", exc.pos], "JSON decode error", "json_invalid")])


async def _send_events(request: web.Request, chunks: list[dict[str, Any]], cut: bool) -> web.StreamResponse:
    """SSE as vLLM frames it; `cut` stops after the opening chunk and two more, with no [DONE]."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for chunk in chunks[:3] if cut else chunks:
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    if cut:
        _hang_up(request)
    else:
        await response.write(b"data: [DONE]\n\n")
    return response


async def _send_half(request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
    """Headers promising the whole JSON body, half of it, then a closed connection."""
    data = json.dumps(payload).encode()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    _hang_up(request)
    return response


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _cloudflare_page(status: int) -> str:
    reason = _reason(status)
    return f"""<!DOCTYPE html>
<html lang="en-US">
<head><meta charset="UTF-8"><title>api.intelligence.io.solutions | {status}: {reason}</title></head>
<body>
<div id="cf-wrapper">
<h1><span class="cf-error-type">Error</span> <span class="cf-error-code">{status}</span></h1>
<h2 class="cf-subheadline">{reason}</h2>
<p>The web server reported an error. Please try again in a few minutes.</p>
<p>Cloudflare Ray ID: <strong>8c1f2e3d4b5a6978</strong> &bull; Performance &amp; security by Cloudflare</p>
</div>
</body>
</html>
"""


# --- validation, in FastAPI's 422 shape ------------------------------------------------------------


def _field_error(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_}


def _missing(loc: list[str | int]) -> dict[str, Any]:
    return _field_error(loc, "Field required", "missing")


def _unprocessable(errors: list[dict[str, Any]]) -> ApiError:
    """FastAPI's 422: the list of errors as `detail`, and one line of them as the message."""
    message = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in errors)
    return ApiError(422, message, detail=errors)


def _require_object(body: Any) -> None:
    if body is None:
        raise _unprocessable([_missing(["body"])])
    if not isinstance(body, dict):
        raise _unprocessable([_field_error(["body"], "Input should be a valid dictionary", "dict_type")])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


ROLES = ("system", "user", "assistant")


def _validate_chat(body: Any) -> None:
    _require_object(body)
    errors: list[dict[str, Any]] = []
    if "model" not in body:
        errors.append(_missing(["body", "model"]))
    elif not isinstance(body["model"], str):
        errors.append(_field_error(["body", "model"], "Input should be a valid string", "string_type"))
    messages = body.get("messages")
    if "messages" not in body:
        errors.append(_missing(["body", "messages"]))
    elif not isinstance(messages, list):
        errors.append(_field_error(["body", "messages"], "Input should be a valid list", "list_type"))
    elif not messages:
        errors.append(
            _field_error(["body", "messages"], "List should have at least 1 item after validation, not 0", "too_short")
        )
    else:
        for index, message in enumerate(messages):
            errors += _message_errors(message, ["body", "messages", index])
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and not (_is_int(value) and value >= 1):
            errors.append(_field_error(["body", key], "Input should be an integer of at least 1", "int_type"))
    if not isinstance(body.get("stream", False), bool):
        errors.append(_field_error(["body", "stream"], "Input should be a valid boolean", "bool_type"))
    if not isinstance(body.get("stream_options") or {}, dict):
        errors.append(_field_error(["body", "stream_options"], "Input should be a valid dictionary", "dict_type"))
    if errors:
        raise _unprocessable(errors)


def _message_errors(message: Any, loc: list[str | int]) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        return [_field_error(loc, "Input should be a valid dictionary", "dict_type")]
    errors = []
    if "role" not in message:
        errors.append(_missing([*loc, "role"]))
    elif message["role"] not in ROLES:
        errors.append(_field_error([*loc, "role"], "Input should be 'system', 'user' or 'assistant'", "literal_error"))
    content = message.get("content")
    if "content" not in message:
        errors.append(_missing([*loc, "content"]))
    elif isinstance(content, list):
        expected = "Input should be a text part or an image_url part"
        errors += [
            _field_error([*loc, "content", index], expected, "union_tag_invalid")
            for index, part in enumerate(content)
            if not _is_valid_part(part)
        ]
    elif not isinstance(content, str):
        errors.append(_field_error([*loc, "content"], "Input should be a valid string or list", "string_type"))
    return errors


def _is_valid_part(part: Any) -> bool:
    """`{"type": "text", "text": str}` or `{"type": "image_url", "image_url": {"url": str}}`."""
    if not isinstance(part, dict):
        return False
    if part.get("type") == "text":
        return isinstance(part.get("text"), str)
    image = part.get("image_url")
    return part.get("type") == "image_url" and isinstance(image, dict) and isinstance(image.get("url"), str)


# --- chat ------------------------------------------------------------------------------------------

REASONING_MODEL = re.compile(r"DeepSeek-R1|QwQ")
LONG_DIRECTIVE = re.compile(r"emulate:long=(\d+)")
DATA_URL = re.compile(r"data:image/(?:jpeg|png|webp|gif);base64,(.*)", re.DOTALL)

# The ~30-line code block in the middle of an `emulate:long` answer.
CODE_BLOCK = (
    "```python\n"
    "def emulated_total() -> int:\n"
    '    """Add up one to twenty-six, one line at a time."""\n'
    "    total = 0\n"
    + "".join(f"    total += {n}\n" for n in range(1, 27))
    + "    return total\n"
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


def _context_error(limit: int, prompt_tokens: int, completion_tokens: int) -> ApiError:
    """vLLM's own words for a request over the model's context length."""
    message = (
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt_tokens + completion_tokens} tokens ({prompt_tokens} in the messages, {completion_tokens} in "
        "the completion). Please reduce the length of the messages or completion."
    )
    vllm = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
    return ApiError(400, message, extra=vllm)


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


# --- agents and workflows --------------------------------------------------------------------------

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


POSITIVE_INT = ArgKind({"type": "integer", "minimum": 1}, lambda v: _is_int(v) and v >= 1,
                       "Input should be an integer of at least 1", "int_type")
TEXT = ArgKind({"type": "string", "minLength": 1}, lambda v: isinstance(v, str) and bool(v.strip()),
               "Input should be a non-empty string", "string_type")
LABELS = ArgKind({"type": "array", "items": {"type": "string"}, "minItems": 1},
                 lambda v: isinstance(v, list) and bool(v) and all(isinstance(label, str) for label in v),
                 "Input should be a non-empty list of strings", "list_type")
FRACTION = ArgKind({"type": "number", "minimum": 0, "maximum": 1},
                   lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1,
                   "Input should be a number between 0 and 1", "float_type")
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
    "custom": {"name": (TEXT, True), "objective": (TEXT, True), "instructions": (TEXT, True),
               "context": (OBJECT, False)},
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


def _validate_workflow(body: Any) -> tuple[str, dict[str, Any]]:
    """The input text and the args of a valid run body; 422 otherwise."""
    _require_object(body)
    errors: list[dict[str, Any]] = []
    text = body["text"] if "text" in body else body.get("objective")
    if text is None:
        errors.append(_missing(["body", "text"]))
    elif not isinstance(text, str):
        errors.append(_field_error(["body", "text"], "Input should be a valid string", "string_type"))
    names = body.get("agent_names", [])
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        errors.append(_field_error(["body", "agent_names"], "Input should be a valid list of strings", "list_type"))
    args = body.get("args")
    if args is None:
        errors.append(_missing(["body", "args"]))
    elif not isinstance(args, dict):
        errors.append(_field_error(["body", "args"], "Input should be a valid dictionary", "dict_type"))
    elif args.get("type") not in TASKS:
        expected = ", ".join(f"'{task}'" for task in TASKS)
        errors.append(_field_error(
            ["body", "args"],
            f"Input tag {args.get('type')!r} found using 'type' does not match any of the expected tags: {expected}",
            "union_tag_invalid",
        ))
    else:
        task = args["type"]
        for name, (kind, required) in TASKS[task].items():
            loc: list[str | int] = ["body", "args", task, name]
            if name not in args:
                if required:
                    errors.append(_missing(loc))
            elif not kind.accepts(args[name]):
                errors.append(_field_error(loc, kind.message, kind.error_type))
    if errors:
        raise _unprocessable(errors)
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
DATE = re.compile(
    rf"\b(?:(?:{MONTHS})(?:\s+\d{{1,2}}(?:st|nd|rd|th)?)?(?:,?\s+\d{{4}})?|{DAYS}|(?:1[89]|20)\d\d)\b"
)
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
    return "\n".join((
        f'1. Restate the problem: "{text}"',
        "2. Split it into smaller steps and work through each one in order.",
        "3. Check the result against what the problem asks for.",
        f"Answer: the emulated solution to a problem of {len(text.split())} words.",
    ))


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
