"""Async client for the IO Intelligence API, on one `aiohttp.ClientSession` of its own.

Retries only what can succeed on a second try (429, 5xx, connection failures), with exponential
backoff and jitter, honouring `Retry-After`. Everything else becomes a named error from `errors`.

It speaks aiohttp directly, because the CPU of each call caps how many requests one process
answers: httpx's own pool (httpcore) cost several times a bare call, and httpx's interface on
aiohttp's pool (its request and response models, headers, stream wrappers) still cost 1.7 times
a bare aiohttp call (874 against 518 us of CPU per chat call in `benchmarks/client_latency.py`);
directly, 1.1 to 1.15 times (517 against 450 us).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import random
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Required, TypedDict

import aiohttp
from pydantic import SecretStr

from . import metrics
from .errors import (
    APIConnectionError,
    APITimeoutError,
    IOIntelligenceError,
    RateLimitError,
    StreamInterruptedError,
    UnexpectedResponseError,
    error_for_status,
)
from .workflows import WorkflowResult, normalise_result, workflow_body

log = logging.getLogger("iobot.client")


class ImageURL(TypedDict):
    url: str


class ContentPart(TypedDict, total=False):
    """One part of a message with images: `{"type": "text", "text": ...}` or `{"type": "image_url", "image_url": ...}`."""

    type: Required[Literal["text", "image_url"]]
    text: str
    image_url: ImageURL


class Message(TypedDict):
    """One turn of a conversation as the chat API takes it."""

    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


ERROR_DETAIL_LIMIT = 300
MAX_STREAM_LINE = 4 * 1024 * 1024  # one SSE line (one chunk of an answer); longer is no answer iobot can use
_JSON_BODY = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False  # counted by iobot, not reported by the API (agents never report usage)


@dataclass(frozen=True)
class ChatResult:
    content: str
    model: str
    finish_reason: str | None
    usage: Usage | None  # None when the API reported none


@dataclass(frozen=True)
class ModelInfo:
    id: str
    context_length: int | None
    supports_images: bool | None  # None when the API does not say


@dataclass(frozen=True)
class AgentInfo:
    key: str
    name: str
    description: str
    tags: tuple[str, ...]


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def vision_message(question: str, image_urls: Sequence[str]) -> Message:
    """A user message with the question and images as OpenAI `image_url` parts."""
    parts: list[ContentPart] = [{"type": "text", "text": question}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return {"role": "user", "content": parts}


class IOClient:
    """The API, as iobot uses it. Close it with `aclose()` or use it as an async context manager."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | str,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 20.0,
        agents_ttl: float = 600.0,
        max_connections: int = 100,
    ) -> None:
        """`timeout`: seconds allowed to get a connection from the pool and between reads of an answer;
        `connect_timeout`: seconds allowed to open a connection."""
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._secret = key
        self._base_url = base_url.rstrip("/") + "/"
        self._headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=connect_timeout, sock_read=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None  # made on first use: aiohttp binds it to the running loop
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.last_error: tuple[float, str] | None = None  # (unix time, description) of the last failed call
        self._agents_ttl = agents_ttl
        self._agents: dict[str, AgentInfo] | None = None
        self._agents_fetched = 0.0
        self._agents_lock = asyncio.Lock()

    async def __aenter__(self) -> IOClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- endpoints -------------------------------------------------------------------------

    async def chat(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> ChatResult:
        body = _chat_body(model, messages, max_tokens, temperature)
        data = await self._request_json("POST", "chat/completions", body)
        try:
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise UnexpectedResponseError("chat completion without choices[0].message") from None
        return ChatResult(
            content=strip_reasoning(content),
            model=str(data.get("model") or model),
            finish_reason=choice.get("finish_reason"),
            usage=_usage(data.get("usage")),
        )

    @asynccontextmanager
    async def stream_chat(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[ChatStream]:
        """`async with client.stream_chat(...) as stream: async for text in stream: ...`, then `stream.result`."""
        body = _chat_body(model, messages, max_tokens, temperature)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        response = await self._send("POST", "chat/completions", body, stream=True)
        try:
            yield ChatStream(response, model, self._scrub)
        finally:
            response.release()

    async def models(self) -> list[ModelInfo]:
        return parse_models(await self._request_json("GET", "models"))

    async def agents(self) -> dict[str, AgentInfo]:
        """The predefined agents, fetched at most once per `agents_ttl` seconds."""
        async with self._agents_lock:
            if self._agents is None or time.monotonic() - self._agents_fetched > self._agents_ttl:
                self._agents = parse_agents(await self._request_json("GET", "agents"))
                self._agents_fetched = time.monotonic()
            return self._agents

    async def run_workflow(self, task_type: str, text: str, **args: Any) -> WorkflowResult:
        """Run a predefined agent task (`summarize_text`, `sentiment`, ...) and normalise its result."""
        body = workflow_body(task_type, text, args)
        data = await self._request_json("POST", "workflows/run", body)
        if not isinstance(data, dict) or "result" not in data:
            raise UnexpectedResponseError("workflow answer without 'result'")
        return normalise_result(task_type, data["result"], args)

    # --- transport -------------------------------------------------------------------------

    async def _request_json(self, method: str, path: str, body: Any = None) -> Any:
        response = await self._send(method, path, body)
        try:
            return json.loads(await response.read())  # the body `_send` read
        except ValueError:
            raise UnexpectedResponseError(f"{method} /{path}: answer is not JSON") from None

    async def _send(self, method: str, path: str, body: Any = None, *, stream: bool = False) -> aiohttp.ClientResponse:
        """Send with retries; return a 2xx response, its body read unless `stream`, or raise the named error.

        The body is serialised once and sent as is on every attempt.
        """
        data = None if body is None else json.dumps(body).encode()
        headers = _JSON_BODY if data is not None else None
        url = self._base_url + path
        session = self._session or self._open_session()
        for attempt in range(self.max_retries + 1):
            started = time.perf_counter()
            try:
                response = await session.request(method, url, data=data, headers=headers)
                success = 200 <= response.status < 300
                if not (stream and success):
                    await response.read()  # kept by the response; reading the whole body frees the connection
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = _connection_error(f"{method} /{path}", exc)
            else:
                elapsed = time.perf_counter() - started
                metrics.API_LATENCY.labels(path).observe(elapsed)
                log.debug("%s /%s -> %d in %.1f ms", method, path, response.status, elapsed * 1000)
                if success:
                    return response
                text = await response.text(errors="replace")  # the body read above
                detail = self._scrub(describe_error_body(response.status, text, response.headers.get("Content-Type", "")))
                retry_after = _retry_after(response.headers.get("Retry-After"))
                error = error_for_status(response.status, f"{method} /{path}: {detail}", retry_after)
            delay = self._retry_delay(error, attempt)
            if delay is None:
                self.last_error = (time.time(), f"{type(error).__name__}: {error}")
                raise error
            metrics.API_RETRIES.labels(path).inc()
            log.warning("retrying %s /%s in %.2f s after: %s", method, path, delay, error)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")

    def _open_session(self) -> aiohttp.ClientSession:
        """The one session of this client, honouring a proxy set in the environment."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections),
            headers=self._headers,
            timeout=self._timeout,
            trust_env=proxy_in_environment(),
        )
        return self._session

    def _retry_delay(self, error: IOIntelligenceError, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if not error.retryable or attempt >= self.max_retries:
            return None
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            # A long wait is better spent on another model: give up and let the caller fall back.
            return error.retry_after if error.retry_after <= self.max_retry_after else None
        ceiling = min(self.backoff_max, self.backoff_base * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


def proxy_in_environment() -> bool:
    """Whether a proxy is set in the environment (HTTPS_PROXY, NO_PROXY, ...), for aiohttp's `trust_env`.

    httpx honours one by default; aiohttp looks it up again on every request when it trusts the
    environment, so it is asked to only when a proxy is set.
    """
    return bool(urllib.request.getproxies())


def _connection_error(call: str, exc: aiohttp.ClientError | TimeoutError) -> IOIntelligenceError:
    """The named error for a call that got no HTTP answer, saying what happened.

    Order matters: aiohttp's connect timeout (`ConnectionTimeoutError`) is a `ServerTimeoutError`
    like its read timeout, every aiohttp timeout is a `TimeoutError`, and a TLS failure is a
    `ClientConnectorError` like a refused connection.
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APIConnectionError(f"{call}: connect timed out")
    if isinstance(exc, TimeoutError):
        return APITimeoutError(f"{call}: no answer within the timeout")
    if isinstance(exc, aiohttp.ClientSSLError):  # a kind of ClientConnectorError
        return APIConnectionError(f"{call}: the TLS handshake failed")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return APIConnectionError(f"{call}: connection refused or host unreachable")
    return APIConnectionError(f"{call}: the server hung up or spoke no valid HTTP ({type(exc).__name__})")


class ChatStream:
    """A streamed answer: iterate for pieces of text; `result` holds the whole once iteration ends."""

    def __init__(self, response: aiohttp.ClientResponse, model: str, scrub: Any) -> None:
        self._response = response
        self._scrub = scrub
        self._model = model
        self._finish_reason: str | None = None
        self._usage: Usage | None = None
        self._content: list[str] = []
        self.result: ChatResult | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        hidden = _ReasoningFilter()
        done = False
        try:
            async for line in _lines(self._response.content):
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                text = self._read_chunk(payload)
                visible = hidden.feed(text) if text else ""
                if visible:
                    self._content.append(visible)
                    yield visible
        except TimeoutError:  # aiohttp's read timeout is one
            raise APITimeoutError("stream stalled") from None
        except aiohttp.ClientError as exc:
            raise StreamInterruptedError(f"stream broke: {type(exc).__name__}") from None
        if not done and self._finish_reason is None:
            raise StreamInterruptedError("stream ended before its last chunk")
        self.result = ChatResult("".join(self._content).strip(), self._model, self._finish_reason, self._usage)

    def _read_chunk(self, payload: str) -> str:
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise UnexpectedResponseError("stream chunk is not JSON") from None
        if not isinstance(chunk, dict):
            raise UnexpectedResponseError("stream chunk is not an object")
        if chunk.get("error"):
            raise StreamInterruptedError(self._scrub(f"error in stream: {_error_text(chunk['error'])}"))
        self._model = str(chunk.get("model") or self._model)
        if chunk.get("usage"):
            self._usage = _usage(chunk["usage"])
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        return (choice.get("delta") or {}).get("content") or ""


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The lines of a body as they arrive, each up to `MAX_STREAM_LINE` bytes.

    aiohttp's own line reading refuses a line over twice its read buffer (512 KiB with aiohttp
    3.14's defaults, less with earlier ones), and one chunk of an answer may be longer.
    A line ends at LF, CR LF or CR, as the SSE format says; a CR LF cut between two reads gives
    one extra empty line, which SSE ignores.
    """
    pending: list[bytes] = []
    pending_size = 0
    async for chunk in content.iter_any():
        for piece in chunk.splitlines(keepends=True):
            pending.append(piece)
            if piece.endswith((b"\n", b"\r")):
                yield b"".join(pending).rstrip(b"\r\n").decode("utf-8", errors="replace")
                pending.clear()
                pending_size = 0
                continue
            pending_size += len(piece)
            if pending_size > MAX_STREAM_LINE:
                raise UnexpectedResponseError(f"stream line longer than {MAX_STREAM_LINE} bytes")
    if pending:
        yield b"".join(pending).decode("utf-8", errors="replace")


class _ReasoningFilter:
    """Hides a leading `<think>...</think>` block that some reasoning models put in `content`."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self._buffer = ""
        self._state = "start"  # start -> (thinking ->) answer

    def feed(self, text: str) -> str:
        if self._state == "answer":
            return text
        self._buffer += text
        if self._state == "start":
            stripped = self._buffer.lstrip()
            if self.OPEN.startswith(stripped):
                return ""  # still could be the opening tag
            if not stripped.startswith(self.OPEN):
                self._state = "answer"
                out, self._buffer = self._buffer, ""
                return out
            self._state = "thinking"
        end = self._buffer.find(self.CLOSE)
        if end < 0:
            return ""
        self._state = "answer"
        out = self._buffer[end + len(self.CLOSE) :].lstrip()
        self._buffer = ""
        return out


def strip_reasoning(content: str) -> str:
    """The answer without a leading `<think>...</think>` block."""
    return re.sub(r"^\s*<think>.*?</think>\s*", "", content, flags=re.DOTALL).strip()


def _chat_body(model: str, messages: Sequence[Message], max_tokens: int | None, temperature: float | None) -> dict:
    body: dict[str, Any] = {"model": model, "messages": list(messages)}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    return body


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        prompt = int(raw.get("prompt_tokens") or 0)
        completion = int(raw.get("completion_tokens") or 0)
        total = int(raw.get("total_tokens") or prompt + completion)
    except (TypeError, ValueError):
        return None
    return Usage(prompt, completion, total)


def parse_models(data: Any) -> list[ModelInfo]:
    """Both documented shapes: OpenAI's `{"data": [{"id"}]}` and the newer `{"data": [{"name", "metadata"}]}`."""
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise UnexpectedResponseError("model list without 'data'")
    models = []
    for item in items:
        if not isinstance(item, dict):
            continue
        model_id = item.get("id") or item.get("name") or item.get("model_id")
        if not model_id:
            continue
        metadata = _object(item.get("metadata"))
        context = metadata.get("context_window") or item.get("context_window")
        images = metadata.get("supports_images_input")
        models.append(
            ModelInfo(
                id=str(model_id),
                context_length=int(context) if isinstance(context, (int, float)) else None,
                supports_images=images if isinstance(images, bool) else None,
            )
        )
    return models


def parse_agents(data: Any) -> dict[str, AgentInfo]:
    agents = data.get("agents") if isinstance(data, dict) else None
    if not isinstance(agents, dict):
        raise UnexpectedResponseError("agent list without 'agents'")
    parsed = {}
    for key, info in agents.items():
        info = _object(info)
        metadata = _object(info.get("metadata"))
        tags = metadata.get("tags")
        tags = tags if isinstance(tags, list) else []
        parsed[key] = AgentInfo(
            key=key,
            name=str(info.get("name") or key),
            description=str(info.get("description") or "").strip(),
            tags=tuple(str(tag) for tag in tags),
        )
    return parsed


def _object(value: Any) -> dict[str, Any]:
    """A JSON object from the API, or an empty one where it sent something else."""
    return value if isinstance(value, dict) else {}


def describe_error_body(status: int, text: str, content_type: str = "") -> str:
    """The most useful short text in an error body: `detail`, `message`, `error.message`, or the raw text."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("detail", "message", "error"):
            if data.get(key):
                return _cut(_error_text(data[key]))
    if "html" in content_type or text.lstrip().startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        return _cut(f"HTML error page: {title.group(1).strip() if title else 'no title'}")
    return _cut(text.strip() or f"HTTP {status} with an empty body")


def _error_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("message") or value.get("msg") or json.dumps(value))
    if isinstance(value, list):  # FastAPI validation errors
        return "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg')}" if isinstance(item, dict) else str(item)
            for item in value
        )
    return str(value)


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_DETAIL_LIMIT else text[: ERROR_DETAIL_LIMIT - 1] + "…"


def _retry_after(value: str | None) -> float | None:
    """A `Retry-After` header as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
