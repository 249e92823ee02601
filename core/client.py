"""Async client for the IO Intelligence API, on one shared `httpx.AsyncClient`.

Retries only what can succeed on a second try (429, 5xx, connection failures), with exponential
backoff and jitter, honouring `Retry-After`. Everything else becomes a named error from `errors`.

Requests go out through aiohttp's connection pool under httpx's interface (`aiohttp_transport`):
httpx's own pool (httpcore) scans every connection for each request and costs several times the
CPU per call, which capped how many requests one process could answer.
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
import httpx
from httpx_aiohttp import AiohttpTransport
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


def aiohttp_transport(max_connections: int = 100) -> httpx.AsyncBaseTransport:
    """An httpx transport on aiohttp's connection pool, for every `httpx.AsyncClient` of the process.

    Its aiohttp session is made on first use, inside the running event loop; closing the httpx
    client closes it. Redirects are never followed by the transport (httpx decides).
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return _AiohttpTransport(limits=limits)


class _AiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport, its failures named as httpx's own transport names them.

    httpx-aiohttp 0.2 reports every aiohttp connection failure (refused, reset, hung up) as
    `httpx.ConnectTimeout` and lets an invalid HTTP answer through as aiohttp's own error: a refused
    connection would read "timed out", a stream the server hung up on would look stalled, and
    callers catching `httpx.HTTPError` would miss a server speaking no valid HTTP.
    """

    def get_client(self) -> aiohttp.ClientSession:
        """The session, honouring a proxy set in the environment (HTTPS_PROXY, NO_PROXY, ...) as httpx does.

        aiohttp looks the proxy up again on every request when it trusts the environment, so it is
        asked to only when a proxy is set.
        """
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0, keepalive_timeout=self.limits.keepalive_expiry, ssl=self.ssl_context
        )
        return aiohttp.ClientSession(connector=connector, trust_env=bool(urllib.request.getproxies()))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except (httpx.ConnectTimeout, aiohttp.ClientError) as exc:
            renamed = _renamed(exc, request)
            if renamed is exc:
                raise
            raise renamed from exc
        assert isinstance(response.stream, httpx.AsyncByteStream)  # the transport streams aiohttp's body
        response.stream = _RenamedStream(response.stream, request)
        return response


class _RenamedStream(httpx.AsyncByteStream):
    """A response body whose failures are renamed as the transport's are."""

    def __init__(self, stream: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except (httpx.ConnectTimeout, aiohttp.ClientError) as exc:
            renamed = _renamed(exc, self._request)
            if renamed is exc:
                raise
            raise renamed from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


def _renamed(exc: Exception, request: httpx.Request) -> Exception:
    """The error httpx's own transport raises for the aiohttp failure behind `exc`, or `exc` when it is right."""
    cause = exc.__cause__ if isinstance(exc, httpx.ConnectTimeout) else exc
    if isinstance(cause, aiohttp.ServerTimeoutError) or not isinstance(cause, aiohttp.ClientError):
        return exc
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(cause), request=request)
    if isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError(str(cause), request=request)
    return httpx.ReadError(str(cause), request=request)


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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._secret = key
        self._base_url = base_url.rstrip("/") + "/"
        self._urls: dict[str, httpx.URL] = {}
        self._transport = transport or aiohttp_transport(max_connections)
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=self._transport,
        )
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
        await self._http.aclose()

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
            await response.aclose()

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
            return response.json()
        except ValueError:
            raise UnexpectedResponseError(f"{method} /{path}: answer is not JSON") from None

    async def _send(self, method: str, path: str, body: Any = None, *, stream: bool = False) -> httpx.Response:
        """Send with retries; return a 2xx response or raise the named error.

        The request goes straight to the transport: the client's own send adds cookies, auth and
        redirect handling, which iobot does not use and which cost a fair share of each call's CPU.
        """
        request = self._http.build_request(method, self._url(path), json=body)
        for attempt in range(self.max_retries + 1):
            started = time.perf_counter()
            try:
                response = await self._transport.handle_async_request(request)
                if not stream:
                    try:
                        await response.aread()
                    finally:
                        await response.aclose()
            except httpx.ConnectTimeout:
                error: IOIntelligenceError = APIConnectionError(f"{method} /{path}: connect timed out")
            except httpx.TimeoutException as exc:
                error = APITimeoutError(f"{method} /{path}: {type(exc).__name__}")
            except httpx.TransportError as exc:
                error = APIConnectionError(f"{method} /{path}: {type(exc).__name__}")
            else:
                elapsed = time.perf_counter() - started
                metrics.API_LATENCY.labels(path).observe(elapsed)
                log.debug("%s /%s -> %d in %.1f ms", method, path, response.status_code, elapsed * 1000)
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
                detail = self._scrub(describe_error_body(response))
                error = error_for_status(response.status_code, f"{method} /{path}: {detail}", _retry_after(response))
            delay = self._retry_delay(error, attempt)
            if delay is None:
                self.last_error = (time.time(), f"{type(error).__name__}: {error}")
                raise error
            metrics.API_RETRIES.labels(path).inc()
            log.warning("retrying %s /%s in %.2f s after: %s", method, path, delay, error)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")

    def _url(self, path: str) -> httpx.URL:
        """The endpoint's absolute URL, parsed once: httpx would parse it against the base on every request."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self._base_url + path)
        return url

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


class ChatStream:
    """A streamed answer: iterate for pieces of text; `result` holds the whole once iteration ends."""

    def __init__(self, response: httpx.Response, model: str, scrub: Any) -> None:
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
            async for line in self._response.aiter_lines():
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
        except httpx.TimeoutException:
            raise APITimeoutError("stream stalled") from None
        except httpx.TransportError as exc:
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


def describe_error_body(response: httpx.Response) -> str:
    """The most useful short text in an error body: `detail`, `message`, `error.message`, or the raw text."""
    text = response.text
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("detail", "message", "error"):
            if data.get(key):
                return _cut(_error_text(data[key]))
    content_type = response.headers.get("content-type", "")
    if "html" in content_type or text.lstrip().startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        return _cut(f"HTML error page: {title.group(1).strip() if title else 'no title'}")
    return _cut(text.strip() or f"HTTP {response.status_code} with an empty body")


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


def _retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds: either a number or an HTTP date."""
    value = response.headers.get("retry-after")
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
