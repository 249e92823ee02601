"""`POST /slack/events` at its edge: what is not a small, signed, readable Slack request is refused with
400, 401 or 413 before any work, and logged without a traceback. Through the real HTTP server."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import httpx
import pytest
from aiohttp import web

from adapters.slack import MAX_REQUEST_BYTES, SlackAdapter
from core.images import ImageLimits
from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.service import Service, ServiceConfig

from .standins.slack import SlackStandIn, command_body, signed_headers

SECRET = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"
BOT_TOKEN = "xoxb-2000000000-3000000000-edgetestvalue"
MODEL = "meta-llama/Llama-3.3-70B-Instruct"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

MALFORMED = {
    "bad JSON": (JSON, '{"type": "event_callback", "event": {"type": "app_mention", '),
    "JSON that is no object": (JSON, '["event_callback", 1, 2]'),
    "a form whose payload is no JSON": (FORM, "payload=%7B%22type%22%3A%22block_actions"),
    "a form that starts like JSON": (FORM, "{command=/io&text=hello"),
}


@pytest.fixture
async def edge(client, ledger, emulator, caplog):
    """The adapter's /slack/events on 127.0.0.1; yields its URL, the Slack stand-in and the emulator."""
    caplog.set_level(logging.DEBUG)
    config = ServiceConfig(model=MODEL, vision_model=MODEL)
    async with SlackStandIn(BOT_TOKEN) as slack, httpx.AsyncClient() as downloads:
        adapter = SlackAdapter(
            Service(client, ledger, load_quota_table(), config, downloads, store=MemoryStore()),
            bot_token=BOT_TOKEN,
            signing_secret=SECRET,
            api_url=slack.api_url,
            file_hosts=["127.0.0.1"],
            image_limits=ImageLimits(),
            store=MemoryStore(),
        )
        app = web.Application()
        app.add_routes(adapter.routes())
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events", slack, emulator
        finally:
            await runner.cleanup()
            await adapter.stop()
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]


def assert_no_work(slack: SlackStandIn, emulator) -> None:
    assert slack.calls == [], "nothing was sent to Slack"
    assert emulator.requests == [], "nothing was asked of the API"


@pytest.mark.parametrize("case", MALFORMED)
async def test_a_malformed_body_is_401_unsigned_and_400_signed(edge, case):
    url, slack, emulator = edge
    content_type, body = MALFORMED[case]
    async with httpx.AsyncClient() as http:
        unsigned = await http.post(url, content=body, headers={"Content-Type": content_type})
        forged = await http.post(url, content=body, headers=signed_headers(body, "not-the-secret", content_type))
        signed = await http.post(url, content=body, headers=signed_headers(body, SECRET, content_type))
    assert (unsigned.status_code, forged.status_code, signed.status_code) == (401, 401, 400)
    assert "malformed body" in signed.text
    await asyncio.sleep(0.1)  # room for any work wrongly started
    assert_no_work(slack, emulator)


def headers_without(*names: str, body: str, **changes: str) -> dict[str, str]:
    headers = {**signed_headers(body, SECRET, FORM), **changes}
    return {name: value for name, value in headers.items() if name not in names}


async def test_missing_stale_or_garbled_signature_headers_are_401(edge):
    url, slack, emulator = edge
    body = command_body("ask hello", user="U0ANA", response_url=slack.response_url("r1"), trigger_id="t1")
    variants = [
        headers_without("X-Slack-Signature", "X-Slack-Request-Timestamp", body=body),
        headers_without("X-Slack-Signature", body=body),
        headers_without("X-Slack-Request-Timestamp", body=body),
        signed_headers(body, SECRET, FORM, timestamp=int(time.time()) - 600),
        headers_without(body=body, **{"X-Slack-Request-Timestamp": "soon"}),
        headers_without(body=body, **{"X-Slack-Request-Timestamp": "9" * 5000}),
        headers_without(body=body, **{"X-Slack-Signature": "v0=" + "é" * 64}),
    ]
    async with httpx.AsyncClient() as http:
        for headers in variants:
            encoded = {name.encode(): value.encode() for name, value in headers.items()}
            response = await http.post(url, content=body.encode(), headers=encoded)
            assert response.status_code == 401, headers
    async with httpx.AsyncClient() as http:  # bytes that are no UTF-8, signed or not
        raw = b"text=\xff\xfe&command=/io"
        assert (await http.post(url, content=raw, headers={"Content-Type": FORM})).status_code == 401
    await asyncio.sleep(0.1)
    assert_no_work(slack, emulator)


async def exchange(url: str, head: str, chunks: list[bytes]) -> bytes:
    """Send a raw request head and some body chunks; return the status line the server answers with."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head.encode())
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        async with asyncio.timeout(10):
            return await reader.readline()
    finally:
        writer.close()


@pytest.mark.parametrize("signed", [False, True])
async def test_a_body_over_1_mb_is_413_before_it_is_read(edge, signed):
    url, slack, emulator = edge
    size = MAX_REQUEST_BYTES + 1
    signature = signed_headers("x" * size, SECRET, FORM) if signed else {"Content-Type": FORM}
    head = "POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signature.items())
    # Content-Length says too much and no body follows: the answer comes without waiting for it.
    status = await exchange(url, head + f"Content-Length: {size}\r\n\r\n", [])
    assert status.startswith(b"HTTP/1.1 413")
    # Chunked, with no length: refused as soon as the limit is passed, the rest never sent.
    chunk = b"x" * 65_536
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (size // len(chunk) + 1)
    status = await exchange(url, head + "Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert status.startswith(b"HTTP/1.1 413")
    assert_no_work(slack, emulator)


async def test_a_signed_request_within_the_limit_is_served(edge):
    url, slack, _ = edge
    body = command_body("ask hello", user="U0ANA", response_url=slack.response_url("r1"), trigger_id="t1")
    async with httpx.AsyncClient() as http:
        ack = await http.post(url, content=body, headers=signed_headers(body, SECRET, FORM))
    assert ack.status_code == 200
    [answer] = await slack.wait_for(lambda: slack.responses("r1"))
    assert "hello" in str(answer)
