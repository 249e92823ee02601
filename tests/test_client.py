"""The IO Intelligence client against the emulator over loopback HTTP: endpoints, streaming, faults."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from PIL import Image
from prometheus_client import REGISTRY

from core.client import MAX_STREAM_LINE, IOClient, Message, _connection_error, data_url, parse_models, vision_message
from core.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    IOIntelligenceError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
    UnexpectedResponseError,
    UnprocessableEntityError,
)
from core.workflows import Classification, CustomResult, Entities, Moderation, Reasoning, Sentiment, Summary, Translation
from emulator import Emulator, Fault

from .conftest import API_KEY

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"
USER: list[Message] = [{"role": "user", "content": "What is the capital of France?"}]


def png(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def api_calls(emulator: Emulator, path: str) -> int:
    return sum(1 for request in emulator.requests if request.path == path)


@asynccontextmanager
async def serving(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """A tiny HTTP server on 127.0.0.1 answering every request with `handler`; yields its root URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def sse(chunk: dict) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"


# --- endpoints ------------------------------------------------------------------------------


async def test_chat_returns_content_model_and_reported_usage(client):
    result = await client.chat(MODEL, USER, max_tokens=200)
    assert "What is the capital of France?" in result.content
    assert result.model == MODEL
    assert result.finish_reason == "stop"
    assert result.usage is not None and result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


async def test_stream_yields_pieces_and_usage_from_the_final_chunk(client, emulator):
    pieces = []
    async with client.stream_chat(MODEL, USER) as stream:
        async for piece in stream:
            pieces.append(piece)
    assert len(pieces) > 1, "the answer should arrive in several pieces"
    assert stream.result is not None
    assert stream.result.content == "".join(pieces).strip()
    assert "What is the capital of France?" in stream.result.content
    assert stream.result.usage is not None and stream.result.usage.completion_tokens > 0
    body = emulator.requests[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_stream_and_plain_chat_agree_on_the_answer(client):
    plain = await client.chat(MODEL, USER)
    async with client.stream_chat(MODEL, USER) as stream:
        async for _ in stream:
            pass
    assert stream.result.content == plain.content
    assert stream.result.usage == plain.usage


async def test_reasoning_model_shows_only_the_answer(client):
    result = await client.chat("deepseek-ai/DeepSeek-R1", USER)
    assert result.content and "What is the capital of France?" in result.content
    async with client.stream_chat("deepseek-ai/DeepSeek-R1", USER) as stream:
        streamed = [piece async for piece in stream]
    assert "".join(streamed).strip() == result.content


async def test_vision_message_with_data_urls_reaches_the_vision_model(client, emulator):
    message = vision_message("What colour is it?", [data_url(png(64, 48), "image/png"), data_url(png(32, 32), "image/png")])
    result = await client.chat(VISION_MODEL, [message])
    assert "64x48" in result.content and "32x32" in result.content
    parts = emulator.requests[-1].body["messages"][0]["content"]
    assert [part["type"] for part in parts] == ["text", "image_url", "image_url"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")


async def test_vision_message_with_a_public_url(client, emulator):
    result = await client.chat(VISION_MODEL, [vision_message("What is it?", ["https://example.com/cat.jpg"])])
    assert result.content
    assert emulator.requests[-1].body["messages"][0]["content"][1]["image_url"]["url"] == "https://example.com/cat.jpg"


async def test_text_only_model_says_it_cannot_see_images(client):
    message = vision_message("What is this?", [data_url(png(), "image/png")])
    result = await client.chat(MODEL, [message])
    assert "can't see images" in result.content


async def test_models_in_the_newer_shape(client):
    models = {model.id: model for model in await client.models()}
    assert models[VISION_MODEL].supports_images is True
    assert models[MODEL].supports_images is False
    assert models[MODEL].context_length == 128_000


async def test_models_in_the_openai_shape():
    async with Emulator(api_key=API_KEY, models_shape="openai") as emulator, IOClient(emulator.base_url, API_KEY) as client:
        models = {model.id: model for model in await client.models()}
    assert MODEL in models and VISION_MODEL in models
    assert models[MODEL].supports_images is None  # this shape does not say


def test_parse_models_reads_id_then_name():
    models = parse_models({"data": [{"id": "a"}, {"name": "b", "metadata": {"context_window": 10}}, {"x": 1}]})
    assert [(m.id, m.context_length) for m in models] == [("a", None), ("b", 10)]


async def test_agents_are_listed_and_cached(client, emulator):
    agents = await client.agents()
    assert {"summary_agent", "translation_agent", "reasoning_agent", "moderation_agent"} <= set(agents)
    assert agents["summary_agent"].description
    await client.agents()
    assert api_calls(emulator, "/agents") == 1


TEXT = "Ada Lovelace met Charles Babbage in London in June 1833. It was a wonderful, happy meeting."


@pytest.mark.parametrize(
    ("task", "args", "kind"),
    [
        ("summarize_text", {"max_words": 5}, Summary),
        ("sentiment", {}, Sentiment),
        ("extract_categorized_entities", {}, Entities),
        ("translate_text", {"target_language": "French"}, Translation),
        ("classify", {"classify_by": ["sports", "history"]}, Classification),
        ("moderation", {"threshold": 0.5}, Moderation),
        ("solve_with_reasoning", {}, Reasoning),
        ("custom", {"name": "poet", "objective": "a haiku", "instructions": "5-7-5"}, CustomResult),
    ],
)
async def test_every_workflow_task_gives_a_typed_result(client, emulator, task, args, kind):
    result = await client.run_workflow(task, TEXT, **args)
    assert isinstance(result, kind)
    body = emulator.requests[-1].body
    assert body["text"] == TEXT and body["args"]["type"] == task


async def test_workflow_results_carry_the_content(client):
    summary = await client.run_workflow("summarize_text", TEXT, max_words=5)
    assert len(summary.summary.split()) <= 6 and summary.key_points
    sentiment = await client.run_workflow("sentiment", TEXT)
    assert sentiment.label == "positive" and 0.5 < sentiment.score <= 1
    translation = await client.run_workflow("translate_text", TEXT, target_language="French")
    assert translation.language == "French" and "Lovelace" in translation.text
    label = await client.run_workflow("classify", TEXT, classify_by=["sports", "meeting"])
    assert label.label == "meeting"
    moderation = await client.run_workflow("moderation", TEXT, threshold=0.5)
    assert set(moderation.scores) >= {"hate_speech", "harassment", "self_harm"} and moderation.flagged == []
    entities = await client.run_workflow("extract_categorized_entities", TEXT)
    assert "Charles Babbage" in " ".join(entities.groups.get("persons", ()))


async def test_workflow_with_a_missing_argument_is_refused_before_any_call(client, emulator):
    with pytest.raises(ValueError, match="target_language"):
        await client.run_workflow("translate_text", TEXT)
    assert api_calls(emulator, "/workflows/run") == 0


# --- faults ---------------------------------------------------------------------------------


def retries_counted() -> float:
    return REGISTRY.get_sample_value("iobot_api_retries_total", {"endpoint": "chat/completions"}) or 0.0


async def test_429_with_retry_after_is_honoured_then_succeeds(client, emulator):
    retried_before = retries_counted()
    emulator.inject(Fault("status", status=429, retry_after="0.3", path="/chat/completions"))
    started = time.monotonic()
    result = await client.chat(MODEL, USER)
    assert result.content
    assert time.monotonic() - started >= 0.3
    assert api_calls(emulator, "/chat/completions") == 2
    assert retries_counted() == retried_before + 1


async def test_429_without_retry_after_backs_off_and_succeeds(client, emulator):
    emulator.inject(Fault("status", status=429, times=2))
    assert (await client.chat(MODEL, USER)).content
    assert api_calls(emulator, "/chat/completions") == 3


async def test_long_retry_after_gives_up_at_once_so_another_model_can_answer(client, emulator):
    emulator.inject(Fault("status", status=429, retry_after="3600"))
    with pytest.raises(RateLimitError) as caught:
        await client.chat(MODEL, USER)
    assert caught.value.retry_after == 3600
    assert api_calls(emulator, "/chat/completions") == 1


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retried(client, emulator, status):
    emulator.inject(Fault("status", status=status, times=2))
    assert (await client.chat(MODEL, USER)).content
    assert api_calls(emulator, "/chat/completions") == 3


async def test_retries_are_bounded(client, emulator):
    emulator.inject(Fault("status", status=503, times=50))
    with pytest.raises(ServerError) as caught:
        await client.chat(MODEL, USER)
    assert caught.value.status == 503
    assert client.last_error is not None and "ServerError" in client.last_error[1]
    assert api_calls(emulator, "/chat/completions") == client.max_retries + 1


async def test_html_error_page_becomes_a_readable_server_error(client, emulator):
    emulator.inject(Fault("html", status=502, times=10))
    with pytest.raises(ServerError) as caught:
        await client.chat(MODEL, USER)
    assert "HTML error page" in str(caught.value)
    assert "<" not in caught.value.user_message


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (422, UnprocessableEntityError),
    ],
)
async def test_client_errors_are_never_retried(client, emulator, status, error):
    emulator.inject(Fault("status", status=status))
    with pytest.raises(error) as caught:
        await client.chat(MODEL, USER)
    assert caught.value.status == status
    assert api_calls(emulator, "/chat/completions") == 1


async def test_real_validation_error_names_the_field(client):
    with pytest.raises(UnprocessableEntityError) as caught:
        await client.chat(MODEL, [{"role": "wizard", "content": "hi"}])
    assert "role" in str(caught.value)


async def test_wrong_key_is_an_authentication_error(emulator):
    async with IOClient(emulator.base_url, "io-v2-wrong") as client:
        with pytest.raises(AuthenticationError):
            await client.chat(MODEL, USER)


async def test_unknown_model_is_not_found(client):
    with pytest.raises(NotFoundError):
        await client.chat("nobody/no-such-model", USER)


async def test_context_length_is_its_own_error(client, emulator):
    emulator.inject(Fault("context_length"))
    with pytest.raises(ContextLengthError) as caught:
        await client.chat(MODEL, USER)
    assert "maximum context length" in str(caught.value)
    with pytest.raises(ContextLengthError):
        await client.chat("microsoft/phi-4", [{"role": "user", "content": "x " * 40_000}], max_tokens=100)


async def test_slow_answer_past_the_timeout_is_a_timeout_and_not_retried(emulator):
    emulator.inject(Fault("slow", delay=1.0))
    async with IOClient(emulator.base_url, API_KEY, timeout=0.3) as client:
        with pytest.raises(APITimeoutError):
            await client.chat(MODEL, USER)
    assert api_calls(emulator, "/chat/completions") == 1


async def test_slow_answer_within_the_timeout_succeeds(client, emulator):
    emulator.inject(Fault("slow", delay=0.2))
    assert (await client.chat(MODEL, USER)).content


async def test_stream_cut_off_midway_is_reported(client, emulator):
    emulator.inject(Fault("cut_stream"))
    received = []
    with pytest.raises(StreamInterruptedError):
        async with client.stream_chat(MODEL, USER) as stream:
            async for piece in stream:
                received.append(piece)
    assert received, "the pieces before the cut still arrive"


async def test_dropped_connection_is_retried_then_reported(client, emulator):
    emulator.inject(Fault("drop", times=50))
    with pytest.raises(APIConnectionError):
        await client.chat(MODEL, USER)
    assert api_calls(emulator, "/chat/completions") == client.max_retries + 1


async def test_dropped_connection_once_then_success(client, emulator):
    emulator.inject(Fault("drop"))
    assert (await client.chat(MODEL, USER)).content


async def test_unreachable_api_is_a_connection_error():
    async with IOClient("http://127.0.0.1:9/api/v1", API_KEY, max_retries=1, backoff_base=0.01) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.chat(MODEL, USER)
    assert "reached" in caught.value.user_message


async def test_connection_failures_are_named_for_what_happened(client, emulator):
    """A refused connection or a hang-up is a connection error that says so, never a timeout."""
    emulator.inject(Fault("drop", times=50))
    with pytest.raises(APIConnectionError) as dropped:
        await client.chat(MODEL, USER)
    assert "hung up" in str(dropped.value) and "refused" not in str(dropped.value) and "timed out" not in str(dropped.value)
    async with IOClient("http://127.0.0.1:9/api/v1", API_KEY, max_retries=0) as unreachable:
        with pytest.raises(APIConnectionError) as refused:
            await unreachable.chat(MODEL, USER)
    assert "refused" in str(refused.value) and "hung up" not in str(refused.value) and "timed out" not in str(refused.value)


async def test_tls_refused_by_the_server_is_a_connection_error_that_says_so(emulator):
    """The emulator speaks plain HTTP: a TLS handshake with it fails."""
    async with IOClient(emulator.base_url.replace("http://", "https://", 1), API_KEY, max_retries=0) as client:
        with pytest.raises(APIConnectionError, match="TLS handshake failed"):
            await client.chat(MODEL, USER)


async def test_a_server_speaking_no_http_is_a_connection_error():
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"this is not HTTP at all\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, IOClient(f"http://127.0.0.1:{port}/api/v1", API_KEY, max_retries=0) as client:
        with pytest.raises(APIConnectionError):
            await client.chat(MODEL, USER)


async def test_a_stream_the_server_hangs_up_on_is_interrupted_not_stalled():
    async def hang_up_midway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        chunk = b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 100000\r\n\r\n" + chunk)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hang_up_midway, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    received = []
    async with server, IOClient(f"http://127.0.0.1:{port}/api/v1", API_KEY, max_retries=0) as client:
        with pytest.raises(StreamInterruptedError):
            async with client.stream_chat(MODEL, USER) as stream:
                async for piece in stream:
                    received.append(piece)
    assert received == ["Hel"]


@pytest.mark.parametrize("size", [200_000, 1_000_000])
async def test_a_long_stream_line_arrives_whole(size):
    """One chunk of an answer may be longer than aiohttp's own line limit (twice its read buffer)."""
    long_text = "word " * (size // 5)  # in one SSE line

    async def long_chunk(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        line = sse({"choices": [{"delta": {"content": long_text}}]})
        for start in range(0, len(line), 30_000):  # the line arrives in pieces
            await response.write(line[start : start + 30_000])
        last = sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}) + b"data: [DONE]\r\n\r\n"
        cut = last.index(b"\r\n") + 1  # between a CR and its LF
        await response.write(last[:cut])
        await response.write(last[cut:])
        return response

    async with (
        serving(long_chunk) as url,
        IOClient(url + "/api/v1", API_KEY, max_retries=0) as client,
        client.stream_chat(MODEL, USER) as stream,
    ):
        pieces = [piece async for piece in stream]
    assert pieces == [long_text]
    assert stream.result is not None and stream.result.content == long_text.strip()
    assert stream.result.finish_reason == "stop"


async def test_a_stream_line_past_the_cap_is_refused():
    async def endless_line(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: " + b"x" * (MAX_STREAM_LINE + 1024))
        return response

    async with serving(endless_line) as url, IOClient(url + "/api/v1", API_KEY, max_retries=0) as client:
        with pytest.raises(UnexpectedResponseError, match="stream line"):
            async with client.stream_chat(MODEL, USER) as stream:
                async for _ in stream:
                    pass


async def test_a_stream_that_stops_sending_is_stalled():
    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 100000\r\n\r\n")
        writer.write(sse({"choices": [{"delta": {"content": "Hel"}}]}))
        await writer.drain()
        await release.wait()
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    received = []
    async with server, IOClient(f"http://127.0.0.1:{port}/api/v1", API_KEY, timeout=0.3, max_retries=0) as client:
        with pytest.raises(APITimeoutError, match="stream stalled"):
            async with client.stream_chat(MODEL, USER) as stream:
                async for piece in stream:
                    received.append(piece)
        release.set()
    assert received == ["Hel"]


@pytest.mark.parametrize(
    ("failure", "error", "wording"),
    [
        (aiohttp.ConnectionTimeoutError("Connection timeout"), APIConnectionError, "connect timed out"),
        (aiohttp.SocketTimeoutError("Timeout on reading data from socket"), APITimeoutError, "timeout"),
        (TimeoutError(), APITimeoutError, "timeout"),
        (aiohttp.ServerDisconnectedError(), APIConnectionError, "hung up"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), APIConnectionError, "hung up"),
    ],
)
def test_each_aiohttp_failure_is_named_for_what_happened(failure, error, wording):
    """aiohttp's connect timeout is a kind of its read timeout: it must still read as a connection failure."""
    named = _connection_error("POST /chat/completions", failure)
    assert type(named) is error and wording in str(named)


async def test_a_proxy_set_in_the_environment_carries_the_calls(monkeypatch):
    """Operators behind a proxy set HTTPS_PROXY / HTTP_PROXY, as for any HTTP client."""
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.host}{request.path}")
        return web.json_response({"choices": [{"message": {"content": "via the proxy"}, "finish_reason": "stop"}]})

    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with serving(proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        async with IOClient("http://api.invalid/api/v1", API_KEY, max_retries=0) as client:
            assert (await client.chat(MODEL, USER)).content == "via the proxy"
    assert seen == ["POST api.invalid/api/v1/chat/completions"]


async def test_faults_on_one_path_leave_others_alone(client, emulator):
    emulator.inject(Fault("status", status=500, path="/workflows/run", times=10))
    assert (await client.chat(MODEL, USER)).content
    with pytest.raises(ServerError):
        await client.run_workflow("sentiment", TEXT)


# --- secrets --------------------------------------------------------------------------------


async def test_the_api_key_never_reaches_a_log_line_or_an_error(client, emulator, caplog):
    caplog.set_level(logging.DEBUG)
    errors: list[IOIntelligenceError] = []
    scenarios = [
        Fault("status", status=429, times=10),
        Fault("status", status=401),
        Fault("html", status=503, times=10),
        Fault("context_length"),
        Fault("drop", times=10),
    ]
    for fault in scenarios:
        emulator.inject(fault)
        try:
            await client.chat(MODEL, USER)
        except IOIntelligenceError as exc:
            errors.append(exc)
        emulator.clear_faults()
    assert len(errors) == len(scenarios)
    await client.chat(MODEL, USER)
    assert caplog.records, "the client should have logged something"
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
    for error in errors:
        assert API_KEY not in str(error) and API_KEY not in error.user_message and API_KEY not in repr(error)


async def test_a_key_echoed_by_the_server_is_scrubbed():
    async def echo_key(request: web.Request) -> web.Response:
        return web.json_response({"detail": f"key {request.headers['Authorization']} is revoked"}, status=401)

    async with serving(echo_key) as base_url, IOClient(base_url, API_KEY) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.chat(MODEL, USER)
    assert API_KEY not in str(caught.value) and "***" in str(caught.value)
