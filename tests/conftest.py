"""Shared fixtures: the IO Intelligence emulator on 127.0.0.1 and a client pointed at it, and a clean
PostgreSQL database per test on the server that `.ci/postgres start` runs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import IO

import pytest

from core.client import IOClient
from emulator import Emulator

from .postgres import fresh_schema

API_KEY = "io-v2-test-7f3c9a1e5b2d4c6f8a0e"  # looks like a real key so a leak would be spotted


def piped(stream: IO[str] | None) -> IO[str]:
    """A pipe of a `subprocess.Popen` started with it (Popen types every pipe as optional)."""
    assert stream is not None, "the process was started without this pipe"
    return stream


@pytest.fixture
async def emulator():
    async with Emulator(api_key=API_KEY) as emu:
        yield emu


@pytest.fixture
async def client(emulator):
    async with IOClient(emulator.base_url, API_KEY, timeout=5, backoff_base=0.01, backoff_max=0.05) as io:
        yield io


POSTGRES_SKIP_REASON = "set IOBOT_TEST_POSTGRES_URL (.ci/postgres start) to run the PostgreSQL tests"


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A URL of an empty PostgreSQL database of its own (a fresh schema), dropped on leaving.

    Without IOBOT_TEST_POSTGRES_URL the test is skipped, or fails under CI, where the server must be running.
    """
    server = os.environ.get("IOBOT_TEST_POSTGRES_URL")
    if not server:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but IOBOT_TEST_POSTGRES_URL is not: {POSTGRES_SKIP_REASON}")
        pytest.skip(POSTGRES_SKIP_REASON)
    async with fresh_schema(server) as url:
        yield url


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """See `postgres_database`: a clean database for the test."""
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def ledger(tmp_path):
    from core.ledger import SQLiteLedger

    opened = await SQLiteLedger.open(str(tmp_path / "ledger.sqlite3"), user_daily_tokens=50_000)
    yield opened
    await opened.close()


def png_bytes(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
async def image_server():
    """Images at http://127.0.0.1:PORT/<name>: `cat.png` (64x48) and `not-an-image.png`."""
    from aiohttp import web

    files = {"cat.png": (png_bytes(), "image/png"), "not-an-image.png": (b"%PDF-1.4 not an image", "image/png")}

    async def serve(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound()
        body, content_type = files[name]
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()
