"""The core service through the real client and the emulator: each command to a readable reply."""

from __future__ import annotations

import pytest

from core.emulator import Fault
from core.quotas import load_quota_table
from core.service import Request, Service, ServiceConfig

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"


@pytest.fixture
def service(client, ledger):
    config = ServiceConfig(model=MODEL, vision_model=VISION_MODEL, max_tokens=256)
    return Service(client, ledger, load_quota_table(), config)


def ask(text: str, **kwargs) -> Request:
    return Request(user="console:tester", text=text, **kwargs)


async def test_a_question_is_answered_by_the_chat_model(service, emulator):
    reply = await service.handle(ask("Why is the sky blue?"))
    assert reply.outcome == "ok" and not reply.private
    assert "Why is the sky blue?" in reply.text
    assert reply.model == MODEL and reply.usage and reply.usage.total_tokens > 0
    sent = emulator.requests[-1].body
    assert sent["model"] == MODEL and sent["max_tokens"] == 256
    assert sent["messages"][0]["role"] == "system" and sent["messages"][-1] == {"role": "user", "content": "Why is the sky blue?"}


async def test_history_goes_before_the_question(service, emulator):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    await service.handle(ask("And then?", history=history))
    assert [m["content"] for m in emulator.requests[-1].body["messages"][1:]] == ["Hi", "Hello!", "And then?"]


async def test_streamed_answer_reports_progress_and_ends_whole(service):
    seen: list[str] = []

    async def progress(text: str) -> None:
        seen.append(text)

    reply = await service.handle(ask("Tell me a story"), progress)
    assert len(seen) > 1 and all(seen[i + 1].startswith(seen[i]) for i in range(len(seen) - 1))
    assert reply.text == seen[-1].strip()
    assert reply.usage is not None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("summarize 5 One two three four five six seven. Second sentence here.", ["**Summary**", "**Key points**"]),
        ("translate german Good morning", ["**German:**", "Good morning"]),
        ("sentiment I love this, it is wonderful", ["**Sentiment:** positive"]),
        ("classify bug,feature The app crashes on save, a bug", ["**Label:** bug"]),
        ("moderate Have a lovely day", ["Nothing crossed the threshold", "hate speech"]),
        ("entities Ada Lovelace met Charles Babbage in London", ["**People:**", "**Places:** London"]),
        ("reason What is 12 times 12?", ["Answer:"]),
    ],
)
async def test_agent_commands_render_readable_results(service, line, expected):
    reply = await service.handle(ask(line))
    assert reply.outcome == "ok", reply.text
    for part in expected:
        assert part in reply.text


async def test_summarize_passes_max_words(service, emulator):
    await service.handle(ask("summarize 20 Some long text."))
    body = emulator.requests[-1].body
    assert body["args"] == {"type": "summarize_text", "max_words": 20} and body["agent_names"] == ["summary_agent"]


async def test_vision_url_goes_to_the_vision_model(service, emulator):
    reply = await service.handle(ask("vision https://example.com/cat.jpg how many cats?"))
    assert reply.model == VISION_MODEL
    content = emulator.requests[-1].body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "how many cats?"}
    assert content[1]["image_url"]["url"] == "https://example.com/cat.jpg"


@pytest.mark.parametrize(("line", "heading"), [("help", "**Commands**"), ("agents", "**Agents**"), ("models", "**Models**")])
async def test_informational_commands_are_private(service, line, heading):
    reply = await service.handle(ask(line))
    assert reply.private and reply.text.startswith(heading)


async def test_usage_line_for_bad_arguments_calls_nothing(service, emulator):
    reply = await service.handle(ask("translate"))
    assert reply.outcome == "usage" and reply.text == "Usage: translate <language> <text>"
    assert emulator.requests == []


async def test_api_failures_become_short_messages(service, emulator):
    emulator.inject(Fault("status", status=503, times=10))
    reply = await service.handle(ask("hello"))
    assert reply.outcome == "error" and "trouble" in reply.text
    emulator.clear_faults()
    emulator.inject(Fault("status", status=401))
    assert "API key" in (await service.handle(ask("hello"))).text
    assert (await service.handle(ask("hello again"))).outcome == "ok", "the next request is served"


async def test_cut_stream_tells_the_person(service, emulator):
    emulator.inject(Fault("cut_stream"))

    async def progress(text: str) -> None:
        pass

    reply = await service.handle(ask("hello"), progress)
    assert reply.outcome == "error" and "cut off" in reply.text


async def test_unexpected_failure_is_contained(service, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(service.client, "chat", broken)
    reply = await service.handle(ask("hello"))
    assert reply.outcome == "error" and "bug" not in reply.text
