"""Shared fixtures: the IO Intelligence emulator on 127.0.0.1 and a client pointed at it."""

from __future__ import annotations

import pytest

from core.client import IOClient
from core.emulator import Emulator

API_KEY = "io-v2-test-7f3c9a1e5b2d4c6f8a0e"  # looks like a real key so a leak would be spotted


@pytest.fixture
async def emulator():
    async with Emulator(api_key=API_KEY) as emu:
        yield emu


@pytest.fixture
async def client(emulator):
    async with IOClient(emulator.base_url, API_KEY, timeout=5, backoff_base=0.01, backoff_max=0.05) as io:
        yield io


@pytest.fixture
async def ledger(tmp_path):
    from core.ledger import SQLiteLedger

    opened = await SQLiteLedger.open(str(tmp_path / "ledger.sqlite3"), user_daily_tokens=50_000)
    yield opened
    await opened.close()
