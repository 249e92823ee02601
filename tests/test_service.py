"""The core service through the real client and the emulator: each command to a readable reply."""

from __future__ import annotations

import logging

import httpx
import pytest

from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.render import model_line
from core.service import Request, Service, ServiceConfig
from emulator import Fault

from .conftest import png_bytes

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"


@pytest.fixture
def service(client, ledger):
    config = ServiceConfig(model=MODEL, vision_model=VISION_MODEL, max_tokens=256, allow_loopback_images=True)
    return Service(client, ledger, load_quota_table(), config, httpx.AsyncClient(), store=MemoryStore())


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


async def test_an_agent_reply_names_the_model_and_the_tokens_it_was_charged(service, ledger, caplog):
    caplog.set_level(logging.INFO, logger="iobot.service")
    reply = await service.handle(ask("summarize 12 Ada Lovelace wrote the first program. She worked with Babbage."))
    assert reply.outcome == "ok" and reply.model == MODEL and reply.usage is not None
    [row] = await ledger.usage(user="console:tester")
    assert row.model == MODEL and row.estimated_tokens == row.total_tokens
    charged = (row.prompt_tokens, row.completion_tokens, row.total_tokens)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == charged
    assert reply.usage.estimated
    assert model_line(reply.model, reply.usage) == f"Llama-3.3-70B-Instruct · ~{row.total_tokens:,} tokens (estimated)"
    [line] = [record.getMessage() for record in caplog.records if "command=summarize" in record.getMessage()]
    assert f"model={MODEL} tokens={row.total_tokens} " in line


async def test_vision_url_is_fetched_normalised_and_sent_as_a_data_url(service, emulator, image_server):
    reply = await service.handle(ask(f"vision {image_server}/cat.png how many cats?"))
    assert reply.outcome == "ok" and reply.model == VISION_MODEL
    assert "64x48" in reply.text, "the emulator saw the real image"
    content = emulator.requests[-1].body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "how many cats?"}
    assert content[1]["image_url"]["url"].startswith("data:image/")


async def test_attached_images_go_to_the_vision_model_with_the_message_as_question(service, emulator):
    images = [("a.png", png_bytes(64, 48)), ("b.png", png_bytes(32, 32))]
    reply = await service.handle(ask("summarize what these show", images=images))
    assert reply.model == VISION_MODEL and "64x48" in reply.text and "32x32" in reply.text
    content = emulator.requests[-1].body["messages"][-1]["content"]
    assert content[0]["text"] == "summarize what these show"
    assert [part["type"] for part in content] == ["text", "image_url", "image_url"]


async def test_refused_images_are_named_and_the_good_ones_still_answered(service, emulator):
    images = [("good.png", png_bytes()), ("report.png", b"%PDF-1.4 renamed")]
    reply = await service.handle(ask("what is this?", images=images))
    assert reply.outcome == "ok" and any("report.png" in note for note in reply.notes)
    assert len(emulator.requests[-1].body["messages"][-1]["content"]) == 2


async def test_only_bad_images_is_a_clear_refusal_with_no_call(service, emulator, image_server):
    reply = await service.handle(ask(f"vision {image_server}/not-an-image.png"))
    assert reply.outcome == "refused" and "not-an-image.png" in reply.text
    reply = await service.handle(ask("vision ftp://example.com/cat.png"))
    assert reply.outcome == "usage" and "`ftp:` links are not supported" in reply.text
    assert not [r for r in emulator.requests if r.path == "/chat/completions"]


async def test_private_addresses_are_refused_for_vision_urls(client, ledger, emulator):
    config = ServiceConfig(model=MODEL, vision_model=VISION_MODEL)  # loopback not allowed, as in production
    service = Service(client, ledger, load_quota_table(), config, httpx.AsyncClient(), store=MemoryStore())
    reply = await service.handle(ask("vision http://127.0.0.1:9/cat.png"))
    assert reply.outcome == "refused" and emulator.requests == []


async def test_local_files_only_when_the_adapter_allows(service, emulator, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(20, 10))
    reply = await service.handle(ask(f"vision {path} what is it?", local_files=True))
    assert reply.outcome == "ok" and "20x10" in reply.text
    reply = await service.handle(ask(f"vision {path} what is it?"))
    assert reply.outcome == "refused"


@pytest.mark.parametrize(("line", "heading"), [("help", "**Commands**"), ("agents", "**Agents**"), ("models", "**Models**")])
async def test_informational_commands_are_private(service, line, heading):
    reply = await service.handle(ask(line))
    assert reply.private and reply.text.startswith(heading)


async def test_usage_line_for_bad_arguments_calls_nothing(service, emulator):
    reply = await service.handle(ask("translate"))
    assert reply.outcome == "usage" and "\nUsage: translate <language> <text>\n" in reply.text
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
