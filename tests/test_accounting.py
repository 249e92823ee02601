"""The service charges every call in the ledger: reserve before, settle after, fall back, refuse clearly."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import httpx

from core.client import Usage
from core.ledger import MemoryStore
from core.quotas import parse_quota_table
from core.service import Request, Service, ServiceConfig
from emulator import Fault

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


def make_service(client, ledger, fallbacks=(FALLBACK, SMALL_VISION), model=MODEL, max_tokens=200) -> Service:
    config = ServiceConfig(
        model=model,
        vision_model=VISION,
        fallback_models=tuple(fallbacks),
        max_tokens=max_tokens,
        allow_loopback_images=True,
        user_requests_per_minute=1_000,  # these tests are about the ledger, not the rate limit
    )
    return Service(client, ledger, QUOTAS, config, httpx.AsyncClient(), store=MemoryStore())


def ask(text: str, **kwargs) -> Request:
    return Request(user=USER, text=text, **kwargs)


async def spend(ledger, model: str, tokens: int) -> None:
    """Use up a model's quota as other people would have."""
    user = f"heavy-user:{model}"
    await ledger.set_user_limit(user, tokens)
    reservation = await ledger.reserve(user=user, model=model, tokens=0, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=tokens, completion_tokens=0, estimated=False)


async def charge(ledger, user: str, tokens: int) -> None:
    """Settle `tokens` of use to a person, as earlier requests would have."""
    reservation = await ledger.reserve(user=user, model=MODEL, tokens=0, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=tokens, completion_tokens=0, estimated=False)


def chat_calls(emulator) -> list:
    return [r for r in emulator.requests if r.path == "/chat/completions" and r.fault is None]


async def test_a_call_is_settled_with_the_tokens_the_api_reported(client, ledger, emulator):
    reply = await make_service(client, ledger).handle(ask("What is io.net?"))
    [row] = await ledger.usage(user=USER)
    assert (row.model, row.requests) == (MODEL, 1) and reply.usage is not None
    assert (row.prompt_tokens, row.completion_tokens) == (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert row.estimated_tokens == 0
    assert await ledger.used_today(user=USER) == reply.usage.total_tokens  # nothing left reserved


async def test_a_streamed_call_is_settled_from_the_final_usage_chunk(client, ledger):
    async def progress(text: str) -> None:
        pass

    reply = await make_service(client, ledger).handle(ask("Stream this"), progress)
    [row] = await ledger.usage(user=USER)
    assert reply.usage is not None and row.total_tokens == reply.usage.total_tokens and row.estimated_tokens == 0


async def test_an_answer_the_api_reported_no_usage_for_is_charged_and_shown_as_an_estimate(client, ledger, monkeypatch):
    answer = client.chat

    async def answer_without_usage(*args, **kwargs):
        return replace(await answer(*args, **kwargs), usage=None)

    monkeypatch.setattr(client, "chat", answer_without_usage)
    reply = await make_service(client, ledger).handle(ask("What is io.net?"))
    [row] = await ledger.usage(user=USER)
    assert row.total_tokens > 0 and row.estimated_tokens == row.total_tokens
    assert reply.usage == Usage(row.prompt_tokens, row.completion_tokens, row.total_tokens, estimated=True)


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


async def test_over_budget_person_is_told_what_is_left_of_their_limit_and_the_reset(client, ledger, emulator):
    await ledger.set_user_limit(USER, 1_000)
    await charge(ledger, USER, 900)
    reply = await make_service(client, ledger).handle(ask("hello"))
    assert reply.outcome == "refused" and reply.private
    assert reply.text.startswith("You have 100 of your 1,000 tokens left today;") and "00:00 UTC" in reply.text
    assert chat_calls(emulator) == []
    other = await make_service(client, ledger).handle(Request(user="slack:T1:U2", text="hello"))
    assert other.outcome == "ok", "someone else is still served"


async def test_concurrent_requests_never_spend_past_a_budget(client, ledger, emulator):
    service = make_service(client, ledger)
    probe = await service.handle(ask("x", request_id="probe"))
    assert probe.usage is not None
    per_request = probe.usage.total_tokens
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


async def test_a_long_history_is_trimmed_to_the_budget_newest_first_and_says_so(client, ledger, emulator):
    # A long thread: 60 turns of about 860 tokens, some 51,000 in all, against a budget of 5,000.
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 500} for i in range(60)]
    await ledger.set_user_limit(USER, 5_000)
    reply = await make_service(client, ledger, max_tokens=1024).handle(ask("And now?", history=history))
    assert reply.outcome == "ok", reply.text
    sent = chat_calls(emulator)[-1].body["messages"]
    kept = len(sent) - 2
    assert sent[-1]["content"] == "And now?" and 1 <= kept < 6
    assert sent[1:-1] == history[-kept:], "the newest turns are kept"
    assert sent[1]["role"] == "user", "no orphaned answer first"
    assert chat_calls(emulator)[-1].body["max_tokens"] == 1024, "the answer's room comes before the history"
    assert f"The {60 - kept} oldest messages of this conversation were left out to fit your daily budget." in reply.notes
    assert await ledger.used_today(user=USER) <= 5_000


async def test_history_is_trimmed_to_the_model_context(client, ledger, emulator):
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 300} for i in range(8)]
    service = make_service(client, ledger, model="microsoft/phi-4")
    reply = await service.handle(ask("And now?", history=history))
    assert reply.outcome == "ok"
    sent = chat_calls(emulator)[-1].body["messages"]
    assert sent[0]["role"] == "system" and sent[-1]["content"] == "And now?"
    assert 1 < len(sent) < len(history) + 2, "some, not all, of the history went along"
    assert sent[1:-1] == history[len(history) - (len(sent) - 2) :], "the newest turns are kept"
    assert (
        f"The {len(history) - (len(sent) - 2)} oldest messages of this conversation were left out to fit the model's context."
        in reply.notes
    )


async def test_an_input_too_long_for_the_model_is_refused_with_its_limit(client, ledger, emulator):
    service = make_service(client, ledger, model="microsoft/phi-4", fallbacks=())
    reply = await service.handle(ask("word " * 3_000))
    assert reply.outcome == "refused" and reply.text.startswith("That message is too long for phi-4: it is about")
    assert "2,000 tokens" in reply.text and re.search(r"room for about [\d,]+ words", reply.text)
    assert chat_calls(emulator) == []


async def test_too_long_for_the_model_is_not_reported_as_a_budget_problem(client, ledger, emulator):
    """The configured model's context is too small, and the one fallback with room costs more than the budget."""
    await ledger.set_user_limit(USER, 4_000)
    service = make_service(client, ledger, model="microsoft/phi-4", fallbacks=(MODEL,))
    reply = await service.handle(ask("word " * 3_000))
    assert reply.outcome == "refused" and reply.text.startswith("That message is too long for phi-4:"), reply.text
    assert "budget" not in reply.text
    assert chat_calls(emulator) == [] and await ledger.used_today(user=USER) == 0


async def test_a_message_longer_than_a_whole_days_budget_is_too_long_in_words(client, ledger, emulator):
    await ledger.set_user_limit(USER, 4_000)
    reply = await make_service(client, ledger).handle(ask("word " * 3_000))
    assert reply.outcome == "refused"
    assert reply.text.startswith("That message is too long for your daily budget: it is about"), reply.text
    assert "4,000 tokens" in reply.text and "00:00" not in reply.text, "waiting for tomorrow would not help"
    assert chat_calls(emulator) == []


# --- a small budget or quota: the answer's room shrinks to what is left ---------------------------


async def test_a_budget_too_small_for_any_answer_says_so_rather_than_wait(client, ledger, emulator):
    await ledger.set_user_limit(USER, 100)
    reply = await make_service(client, ledger, max_tokens=1024).handle(ask("hello"))
    assert reply.outcome == "refused" and reply.text.startswith("Your daily budget of 100 tokens is too small for any answer")
    assert chat_calls(emulator) == []


async def test_a_budget_smaller_than_max_tokens_still_gets_an_answer(client, ledger, emulator):
    await ledger.set_user_limit(USER, 600)
    reply = await make_service(client, ledger, max_tokens=1024).handle(ask("What is io.net?"))
    assert reply.outcome == "ok", reply.text
    [call] = chat_calls(emulator)
    assert 256 <= call.body["max_tokens"] < 600
    assert any("kept to about" in note and "your daily budget" in note for note in reply.notes)
    assert await ledger.used_today(user=USER) <= 600


async def test_what_is_left_of_a_budget_sets_the_answers_room(client, ledger, emulator):
    await ledger.set_user_limit(USER, 5_000)
    await charge(ledger, USER, 4_300)
    reply = await make_service(client, ledger, max_tokens=1024).handle(ask("hello"))
    assert reply.outcome == "ok", reply.text
    [call] = chat_calls(emulator)
    assert 500 < call.body["max_tokens"] < 700, "700 left, less the prompt"
    assert await ledger.used_today(user=USER) <= 5_000


async def test_too_little_left_for_a_short_answer_is_refused_naming_the_limit_and_what_is_left(client, ledger, emulator):
    await ledger.set_user_limit(USER, 5_000)
    await charge(ledger, USER, 4_800)
    reply = await make_service(client, ledger, max_tokens=1024).handle(ask("hello"))
    assert reply.outcome == "refused" and reply.private
    assert reply.text.startswith("You have 200 of your 5,000 tokens left today; this message and a short answer need about")
    assert "resets at 00:00 UTC" in reply.text
    assert chat_calls(emulator) == [] and await ledger.used_today(user=USER) == 4_800


async def test_what_is_left_of_a_models_quota_sets_the_answers_room(client, ledger, emulator):
    await spend(ledger, MODEL, 499_400)
    reply = await make_service(client, ledger, fallbacks=(), max_tokens=1024).handle(ask("hello"))
    assert reply.outcome == "ok" and reply.model == MODEL, reply.text
    assert chat_calls(emulator)[0].body["max_tokens"] < 600
    assert any("the model's daily quota" in note for note in reply.notes)
    assert await ledger.used_today(model=MODEL) <= 500_000


async def test_a_model_with_too_little_left_hands_over_to_the_next(client, ledger, emulator):
    await spend(ledger, MODEL, 499_900)
    reply = await make_service(client, ledger, max_tokens=1024).handle(ask("hello"))
    assert reply.outcome == "ok" and reply.model == FALLBACK
    await spend(ledger, FALLBACK, 499_900)
    reply = await make_service(client, ledger, fallbacks=(FALLBACK,), max_tokens=1024).handle(ask("hello"))
    assert reply.outcome == "refused" and reply.text.startswith("Llama-3.3-70B-Instruct has 100 of its 500,000 tokens left today")


async def test_concurrent_requests_on_a_small_budget_shrink_but_never_spend_past_it(client, ledger, emulator):
    await ledger.set_user_limit(USER, 2_500)
    service = make_service(client, ledger, max_tokens=1024)
    replies = await asyncio.gather(*(service.handle(ask(f"question {n}")) for n in range(30)))
    answered = [reply for reply in replies if reply.outcome == "ok"]
    refused = [reply for reply in replies if reply.outcome == "refused"]
    assert len(answered) + len(refused) == 30 and len(answered) >= 2, [r.text for r in replies]
    assert all("of your 2,500 tokens" in reply.text for reply in refused)
    assert all(call.body["max_tokens"] >= 256 for call in chat_calls(emulator))
    assert await ledger.used_today(user=USER) <= 2_500


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
