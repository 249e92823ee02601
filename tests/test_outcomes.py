"""Typed outcomes and the one user-facing error base: any `UserError` becomes the reply the person reads."""

from __future__ import annotations

import httpx
import pytest

from core.commands import COMMANDS, AgentTask, Command, CommandSpec, Option, UsageError
from core.errors import APITimeoutError, IOIntelligenceError, Outcome, Refusal, ServerError, UserError
from core.images import ImageError
from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.service import Reply, Request, Service, ServiceConfig
from core.tokens import InputTooLong, NoRoom

MODEL = "meta-llama/Llama-3.3-70B-Instruct"


class NothingToDo(UserError):
    """A refusal a new command could bring, unknown to the service."""


def no_arguments(command: Command) -> dict[str, str]:
    raise NothingToDo(f"There is nothing to do with {command.text!r}.")


@pytest.fixture
def service(client, ledger):
    config = ServiceConfig(model=MODEL, vision_model=MODEL, max_tokens=256)
    return Service(client, ledger, load_quota_table(), config, httpx.AsyncClient(), store=MemoryStore())


def test_outcomes_are_the_strings_they_always_were():
    assert [str(outcome) for outcome in Outcome] == ["ok", "usage", "refused", "duplicate", "error"]
    assert Reply("hi").outcome == "ok" and Reply("hi").outcome is Outcome.OK
    assert f"{Outcome.REFUSED}" == "refused" and Outcome("duplicate") is Outcome.DUPLICATE


def test_every_failure_a_person_meets_is_a_user_error_saying_how_it_ends():
    usage = UsageError("translate", "Say which language.")
    too_long = InputTooLong("Llama", NoRoom(needed=900, room=500, message_tokens=800))
    image = ImageError("cat.png is not an image.", "not_image")
    api = ServerError("502 from upstream: <html>", status=502)
    assert [(error.outcome, error.private) for error in (usage, too_long, image, api)] == [
        (Outcome.USAGE, True),
        (Outcome.REFUSED, True),
        (Outcome.REFUSED, False),
        (Outcome.ERROR, False),
    ]
    assert usage.user_message == str(usage) and usage.user_message.startswith("Say which language.\nUsage: translate")
    assert too_long.user_message.startswith("That message is too long for Llama")
    assert image.user_message == "cat.png is not an image."
    assert api.user_message == ServerError.user_message and "upstream" not in api.user_message, "the detail is for the logs"
    assert APITimeoutError().user_message == "The AI service took too long to answer. Please try again."
    assert issubclass(IOIntelligenceError, UserError)


async def test_any_user_error_becomes_its_reply(service, monkeypatch, emulator, ledger):
    record = CommandSpec(
        "nothing",
        "<text>",
        "Do nothing.",
        "nothing at all",
        AgentTask("sentiment", no_arguments),
        options=(Option("text", "The text"),),
    )
    monkeypatch.setitem(COMMANDS, "nothing", record)
    reply = await service.handle(Request(user="console:tester", text="nothing at all"))
    assert reply == Reply("There is nothing to do with 'at all'.", outcome=Outcome.REFUSED, private=True, refusal=Refusal.OTHER)
    assert not any(request.path.endswith("/workflows/run") for request in emulator.requests)
    assert await ledger.used_today(user="console:tester") == 0, "its reservation was released"
