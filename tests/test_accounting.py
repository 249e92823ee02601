"""The service charges every call in the ledger: reserve before, settle after, fall back, refuse clearly."""

from __future__ import annotations

import asyncio

import httpx

from core.emulator import Fault
from core.quotas import parse_quota_table
from core.service import Request, Service, ServiceConfig

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
FALLBACK = "mistralai/Mistral-Large-Instruct-2411"
VISION = "meta-llama/Llama-3.2-90B-Vision-Instruct"
SMALL_VISION = "Qwen/Qwen2-VL-7B-Instruct"
USER = "slack:T1:U1"

QUOTAS = parse_quota_table(
    f"""
    [[model]]
    name = "{MODEL}"
    api_daily_tokens = 500_000
    context_length = 128_000
    [[model]]
    name = "{FALLBACK}"
    api_daily_tokens = 500_000
    context_length = 128_000
    [[model]]
    name = "{VISION}"
    api_daily_tokens = 500_000
    context_length = 16_000
    images = true
    [[model]]
    name = "{SMALL_VISION}"
    api_daily_tokens = 500_000
    images = true
    [[model]]
    name = "microsoft/phi-4"
    api_daily_tokens = 500_000
    context_length = 2_000
    """
)


def make_service(client, ledger, fallbacks=(FALLBACK, SMALL_VISION), model=MODEL) -> Service:
    config = ServiceConfig(
        model=model, vision_model=VISION, fallback_models=tuple(fallbacks), max_tokens=200, allow_loopback_images=True,
        user_requests_per_minute=1_000,  # these tests are about the ledger, not the rate limit
    )
    return Service(client, ledger, QUOTAS, config, httpx.AsyncClient())


def ask(text: str, **kwargs) -> Request:
    return Request(user=USER, text=text, **kwargs)


async def spend(ledger, model: str, tokens: int) -> None:
    """Use up a model's quota as other people would have."""
    user = f"heavy-user:{model}"
    await ledger.set_user_limit(user, tokens)
    reservation = await ledger.reserve(user=user, model=model, tokens=0, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=tokens, completion_tokens=0, estimated=False)


def chat_calls(emulator) -> list:
    return [r for r in emulator.requests if r.path == "/chat/completions" and r.fault is None]


async def test_a_call_is_settled_with_the_tokens_the_api_reported(client, ledger, emulator):
    reply = await make_service(client, ledger).handle(ask("What is io.net?"))
    [row] = await ledger.usage(user=USER)
    assert (row.model, row.requests) == (MODEL, 1)
    assert (row.prompt_tokens, row.completion_tokens) == (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert row.estimated_tokens == 0
    assert await ledger.used_today(user=USER) == reply.usage.total_tokens  # nothing left reserved


async def test_a_streamed_call_is_settled_from_the_final_usage_chunk(client, ledger):
    async def progress(text: str) -> None:
        pass

    reply = await make_service(client, ledger).handle(ask("Stream this"), progress)
    [row] = await ledger.usage(user=USER)
    assert row.total_tokens == reply.usage.total_tokens and row.estimated_tokens == 0


async def test_workflow_calls_are_charged_at_an_estimate_flagged_as_such(client, ledger):
    await make_service(client, ledger).handle(ask("sentiment What a lovely day"))
    [row] = await ledger.usage(user=USER)
    assert row.total_tokens > 0 and row.estimated_tokens == row.total_tokens


async def test_a_failed_call_releases_its_reservation(client, ledger, emulator):
    emulator.inject(Fault("status", status=500, times=10))
    reply = await make_service(client, ledger).handle(ask("hello"))
    assert reply.outcome == "error"
    assert await ledger.used_today(user=USER) == 0 and await ledger.usage(user=USER) == []


async def test_fallback_picks_the_next_model_with_quota(client, ledger, emulator):
    await spend(ledger, MODEL, 499_990)
    reply = await make_service(client, ledger).handle(ask("hello"))
    assert reply.outcome == "ok" and reply.model == FALLBACK
    assert any("Mistral-Large-Instruct-2411" in note and "Llama-3.3-70B-Instruct" in note for note in reply.notes)
    assert [r.body["model"] for r in chat_calls(emulator)] == [FALLBACK]
    [row] = await ledger.usage(user=USER)
    assert row.model == FALLBACK


async def test_a_rate_limited_model_hands_over_and_is_not_charged(client, ledger, emulator):
    emulator.inject(Fault("status", status=429, retry_after="3600", model=MODEL))
    reply = await make_service(client, ledger).handle(ask("hello"))
    assert reply.model == FALLBACK
    assert [row.model for row in await ledger.usage(user=USER)] == [FALLBACK]
    assert await ledger.used_today(model=MODEL) == 0


async def test_every_model_spent_tells_the_person_when_it_resets(client, ledger, emulator):
    await spend(ledger, MODEL, 499_990)
    await spend(ledger, FALLBACK, 499_990)
    reply = await make_service(client, ledger, fallbacks=(FALLBACK,)).handle(ask("hello"))
    assert reply.outcome == "refused"
    assert "Llama-3.3-70B-Instruct" in reply.text and "500,000" in reply.text and "00:00 UTC" in reply.text
    assert chat_calls(emulator) == []


async def test_vision_falls_back_to_a_vision_model_only(client, ledger, emulator, image_server):
    await spend(ledger, VISION, 499_990)
    reply = await make_service(client, ledger).handle(ask(f"vision {image_server}/cat.png what is it?"))
    assert reply.model == SMALL_VISION
    assert [r.body["model"] for r in chat_calls(emulator)] == [SMALL_VISION]


async def test_vision_never_falls_back_to_a_text_only_model(client, ledger, emulator, image_server):
    await spend(ledger, VISION, 499_990)
    service = make_service(client, ledger, fallbacks=(FALLBACK, MODEL))
    assert service.candidates(images=True) == [VISION]
    reply = await service.handle(ask(f"vision {image_server}/cat.png what is it?"))
    assert reply.outcome == "refused" and "Llama-3.2-90B-Vision-Instruct" in reply.text
    assert chat_calls(emulator) == []


async def test_over_budget_person_is_told_what_they_used_their_limit_and_the_reset(client, ledger, emulator):
    await ledger.set_user_limit(USER, 1_000)
    reservation = await ledger.reserve(user=USER, model=MODEL, tokens=0, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=900, completion_tokens=0, estimated=False)
    reply = await make_service(client, ledger).handle(ask("hello"))
    assert reply.outcome == "refused" and reply.private
    assert "900" in reply.text and "1,000" in reply.text and "00:00 UTC" in reply.text
    assert chat_calls(emulator) == []
    other = await make_service(client, ledger).handle(Request(user="slack:T1:U2", text="hello"))
    assert other.outcome == "ok", "someone else is still served"


async def test_concurrent_requests_never_spend_past_a_budget(client, ledger, emulator):
    service = make_service(client, ledger)
    per_request = (await service.handle(ask("x", request_id="probe"))).usage.total_tokens
    budget = per_request + 5 * 900  # room for the probe and a few more reservations of ~900 tokens
    await ledger.set_user_limit(USER, budget)
    replies = await asyncio.gather(*(service.handle(ask("x")) for _ in range(40)))
    answered = sum(reply.outcome == "ok" for reply in replies)
    refused = [reply for reply in replies if reply.outcome == "refused"]
    assert answered + len(refused) == 40 and 1 <= answered < 40
    assert all("of your" in reply.text for reply in refused), "refused for the budget"
    assert await ledger.used_today(user=USER) <= budget


async def test_the_same_request_id_is_run_and_charged_once(client, ledger, emulator):
    service = make_service(client, ledger)
    first, second = await asyncio.gather(
        service.handle(ask("hello", request_id="Ev123")), service.handle(ask("hello", request_id="Ev123"))
    )
    assert sorted([first.outcome, second.outcome]) == ["duplicate", "ok"]
    assert len(chat_calls(emulator)) == 1
    [row] = await ledger.usage(user=USER)
    assert row.requests == 1
    assert (await service.handle(ask("sentiment good", request_id="Ev123"))).outcome == "duplicate"


async def test_history_is_trimmed_to_the_model_context(client, ledger, emulator):
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 300} for i in range(8)]
    service = make_service(client, ledger, model="microsoft/phi-4")
    reply = await service.handle(ask("And now?", history=history))
    assert reply.outcome == "ok"
    sent = chat_calls(emulator)[-1].body["messages"]
    assert sent[0]["role"] == "system" and sent[-1]["content"] == "And now?"
    assert 1 < len(sent) < len(history) + 2, "some, not all, of the history went along"
    assert sent[1:-1] == history[len(history) - (len(sent) - 2) :], "the newest turns are kept"


async def test_an_input_too_long_for_the_model_is_refused_with_its_limit(client, ledger, emulator):
    service = make_service(client, ledger, model="microsoft/phi-4", fallbacks=())
    reply = await service.handle(ask("word " * 3_000))
    assert reply.outcome == "refused" and "2,000" in reply.text and "phi-4" in reply.text
    assert chat_calls(emulator) == []


async def test_usage_shows_a_person_their_own_use_and_what_is_left(client, ledger):
    service = make_service(client, ledger)
    await service.handle(ask("hello"))
    await service.handle(Request(user="slack:T1:OTHER", text="hello from someone else"))
    reply = await service.handle(ask("usage"))
    used = (await ledger.usage(user=USER))[0].total_tokens
    assert reply.private and "Llama-3.3-70B-Instruct" in reply.text
    assert f"Used {used:,} of your 50,000 tokens; {50_000 - used:,} left" in reply.text


async def test_models_shows_todays_use_per_model(client, ledger):
    await spend(ledger, FALLBACK, 123_456)
    reply = await make_service(client, ledger).handle(ask("models"))
    line = next(line for line in reply.text.splitlines() if line.startswith("Mistral-Large"))
    assert "123,456" in line and "376,544" in line
