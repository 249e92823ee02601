"""What keeps one process fair and observable: rate limits, a cap on concurrent work, draining, logs, metrics."""

from __future__ import annotations

import asyncio
import logging

import httpx
from prometheus_client import REGISTRY

from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.ratelimit import RateLimit
from core.service import Request, Service, ServiceConfig
from emulator import Emulator

MODEL = "meta-llama/Llama-3.3-70B-Instruct"


def make_service(client, ledger, **config) -> Service:
    settings = ServiceConfig(model=MODEL, vision_model="meta-llama/Llama-3.2-90B-Vision-Instruct", **config)
    return Service(client, ledger, load_quota_table(), settings, httpx.AsyncClient(), store=MemoryStore())


def test_rate_limit_allows_a_burst_then_one_request_per_slot():
    now = [0.0]
    limit = RateLimit(3, clock=lambda: now[0])  # a slot is 20 s
    assert [limit.wait_needed("ana") for _ in range(3)] == [0, 0, 0]
    assert limit.wait_needed("ana") == 20
    assert limit.wait_needed("bo") == 0, "someone else is not held back"
    now[0] = 15
    assert limit.wait_needed("ana") == 5
    now[0] = 20
    assert limit.wait_needed("ana") == 0, "one slot has come back"
    assert limit.wait_needed("ana") == 20
    now[0] = 200
    assert [limit.wait_needed("ana") for _ in range(4)][-1] == 20, "an idle person gets a whole burst again, no more"


def test_rate_limit_holds_a_person_to_per_minute_over_time():
    now = [0.0]
    limit = RateLimit(7, clock=lambda: now[0])  # a slot of 60/7 s does not add up exactly in floats
    allowed = []
    for step in range(10 * 60 * 4):  # ten minutes of asking four times a second
        now[0] = step / 4
        if limit.wait_needed("ana") == 0:
            allowed.append(now[0])
    assert allowed[:8] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 8.75], "a burst of seven, then one per slot"
    assert 7 + 10 * 7 - 1 <= len(allowed) <= 7 + 10 * 7, "the burst, then seven a minute"
    for start in range(0, 600, 5):  # any minute: at most the burst plus a minute's slots
        assert len([t for t in allowed if start <= t < start + 60]) <= 2 * 7


def count_lines_run(call) -> int:
    """How many lines of core/ratelimit.py one call executes: the work it does, without a clock."""
    import sys

    import core.ratelimit

    lines = 0

    def trace(frame, event, _arg):
        nonlocal lines
        if frame.f_code.co_filename != core.ratelimit.__file__:
            return None
        if event == "line":
            lines += 1
        return trace

    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(None)
    return lines


def test_rate_limit_memory_is_bounded_and_each_request_costs_the_same_with_50000_people():
    now = [0.0]
    limit = RateLimit(2, clock=lambda: now[0])  # two at once: remembered a whole minute after
    alone = count_lines_run(lambda: limit.wait_needed("console:alone"))
    largest = 0
    for person in range(50_000):  # 50,000 people over five minutes, 10,000 in any minute
        now[0] = person * 0.006
        assert limit.wait_needed(f"console:{person}") == limit.wait_needed(f"console:{person}") == 0
        largest = max(largest, len(limit))
    assert 10_000 <= largest <= 10_002, "those idle for a minute are forgotten as others ask"
    crowded = count_lines_run(lambda: limit.wait_needed("console:newcomer"))
    assert crowded == alone, "a request does the same work among 10,000 people as alone"
    now[0] += 60
    for person in range(5_001):  # a minute later, the next people clear the idle crowd as they ask
        assert limit.wait_needed(f"discord:{person}") == 0
    assert len(limit) == 5_001


async def test_a_person_over_the_rate_limit_is_told_and_others_are_served(client, ledger, emulator):
    service = make_service(client, ledger, user_requests_per_minute=2)
    replies = [await service.handle(Request(user="console:ana", text=f"q{i}")) for i in range(3)]
    assert [reply.outcome for reply in replies] == ["ok", "ok", "refused"]
    assert "more than 2 requests a minute" in replies[2].text and "Please wait" in replies[2].text
    assert (await service.handle(Request(user="console:bo", text="hi"))).outcome == "ok"
    assert (await service.handle(Request(user="console:ana", text="help"))).outcome == "ok", "help is never limited"


async def test_a_burst_waits_for_a_slot_and_past_the_queue_timeout_is_told_busy(ledger):
    async with Emulator(answer_delay=0.3) as slow, httpx.AsyncClient() as http:
        from core.client import IOClient

        async with IOClient(slow.base_url, "key") as client:
            service = Service(
                client,
                ledger,
                load_quota_table(),
                ServiceConfig(model=MODEL, vision_model=MODEL, max_concurrent=2, queue_timeout=0.45),
                http,
                store=MemoryStore(),
            )
            replies = await asyncio.gather(*(service.handle(Request(user=f"console:u{i}", text="hi")) for i in range(6)))
    outcomes = sorted(reply.outcome for reply in replies)
    # Two run at once, 0.3 s each: four finish inside the 0.45 s queue timeout, two are told the bot is busy.
    assert outcomes == ["ok", "ok", "ok", "ok", "refused", "refused"]
    assert all("many requests" in reply.text for reply in replies if reply.outcome == "refused")
    assert len([r for r in slow.requests if r.path == "/chat/completions"]) == 4


async def test_drain_lets_work_finish_then_cancels_and_releases_the_rest(ledger):
    async with Emulator(answer_delay=5) as slow:
        from core.client import IOClient

        async with IOClient(slow.base_url, "key") as client:
            service = make_service(client, ledger)
            fast = Request(user="console:ana", text="help")
            tasks = [asyncio.create_task(service.handle(Request(user=f"console:u{i}", text="hi"))) for i in range(5)]
            await asyncio.sleep(0.2)
            assert await ledger.used_today() > 0, "the calls hold reservations"
            cancelled = await service.drain(grace=0.3)
            assert cancelled == 5
            assert all(task.cancelled() for task in tasks)
            assert await ledger.used_today() == 0, "every reservation was released"
            late = await service.handle(fast)
            assert late.outcome == "refused" and "restarting" in late.text


async def test_one_log_line_per_request_without_the_text(client, ledger, caplog):
    caplog.set_level(logging.INFO, logger="iobot.service")
    service = make_service(client, ledger)
    await service.handle(Request(user="slack:T1:U1", text="my secret plans for tuesday", request_id="Ev42"))
    lines = [record for record in caplog.records if record.name == "iobot.service"]
    assert len(lines) == 1
    fields = lines[0].fields
    assert fields["request_id"] == "Ev42" and fields["platform"] == "slack" and fields["command"] == "ask"
    assert fields["model"] == MODEL and fields["tokens"] > 0 and fields["outcome"] == "ok"
    assert "secret plans" not in lines[0].getMessage()


async def test_requests_and_tokens_are_counted(client, ledger):
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before_ok = sample("iobot_requests_total", platform="discord", command="ask", outcome="ok")
    before_usage = sample("iobot_requests_total", platform="discord", command="translate", outcome="usage")
    before_tokens = sample("iobot_tokens_total", model=MODEL, kind="completion")
    service = make_service(client, ledger)
    reply = await service.handle(Request(user="discord:1", text="hello"))
    await service.handle(Request(user="discord:1", text="translate"))
    assert sample("iobot_requests_total", platform="discord", command="ask", outcome="ok") == before_ok + 1
    assert sample("iobot_requests_total", platform="discord", command="translate", outcome="usage") == before_usage + 1
    assert reply.usage is not None
    assert sample("iobot_tokens_total", model=MODEL, kind="completion") == before_tokens + reply.usage.completion_tokens
