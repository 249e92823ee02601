"""The core service: one request from any platform in, one reply out.

Adapters turn a platform event into a `Request` and render the `Reply`; everything in between
(grammar, routing to the right model, calling the API, turning failures into short messages) is here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .client import ChatResult, IOClient, Message, Usage, vision_message
from .commands import Command, UsageError, help_text, parse_command
from .errors import IOIntelligenceError
from .quotas import QuotaTable
from .render import render_agents, render_models, render_result

log = logging.getLogger("iobot.service")

# Called with the whole answer so far while it streams; adapters throttle their own edits.
Progress = Callable[[str], Awaitable[None]]

SYSTEM_PROMPT = (
    "You are iobot, an assistant in a team chat. Answer clearly and concisely. "
    "Use Markdown sparingly: short paragraphs, lists and code blocks."
)
MODERATION_THRESHOLD = 0.5
UNEXPECTED_FAILURE = "Something went wrong on our side while answering. It has been logged; please try again."


@dataclass(frozen=True)
class Request:
    """One thing a person asked for."""

    user: str  # "slack:<team>:<user>", "discord:<user>" or "console:<name>"
    text: str  # what they wrote, without the bot's mention
    command: Command | None = None  # set when the platform parsed it already (typed slash commands)
    history: Sequence[Message] = ()  # earlier turns of the conversation, oldest first
    request_id: str | None = None  # the platform's event or interaction id


@dataclass(frozen=True)
class Reply:
    text: str  # neutral markdown (see render.py)
    outcome: str = "ok"  # ok | usage | refused | error
    private: bool = False  # only for the person who asked (ephemeral where the platform has it)
    model: str | None = None  # the model that answered, if one did
    usage: Usage | None = None
    notes: tuple[str, ...] = field(default=())  # remarks for the person, e.g. about their images


@dataclass(frozen=True)
class ServiceConfig:
    model: str
    vision_model: str
    fallback_models: tuple[str, ...] = ()
    max_tokens: int = 1024
    system_prompt: str = SYSTEM_PROMPT


class Service:
    def __init__(self, client: IOClient, quotas: QuotaTable, config: ServiceConfig) -> None:
        self.client = client
        self.quotas = quotas
        self.config = config

    async def handle(self, request: Request, progress: Progress | None = None) -> Reply:
        """Answer a request. Never raises: every failure becomes a short reply."""
        try:
            command = request.command or parse_command(request.text)
            return await self._dispatch(request, command, progress)
        except UsageError as exc:
            return Reply(str(exc), outcome="usage", private=True)
        except IOIntelligenceError as exc:
            log.warning("API call for %s failed: %s", request.user, exc)
            return Reply(exc.user_message, outcome="error")
        except Exception:
            log.exception("unexpected failure answering %s", request.user)
            return Reply(UNEXPECTED_FAILURE, outcome="error")

    async def _dispatch(self, request: Request, command: Command, progress: Progress | None) -> Reply:
        match command.name:
            case "help":
                return Reply(help_text(command.topic), private=True)
            case "agents":
                return Reply(render_agents(await self.client.agents()), private=True)
            case "models":
                return Reply(render_models(self.quotas), private=True)
            case "ask":
                messages = self._conversation(request.history, {"role": "user", "content": command.text})
                return await self._chat(self.config.model, messages, progress)
            case "vision":
                message = vision_message(command.text, [command.image])
                messages = self._conversation(request.history, message)
                return await self._chat(self.config.vision_model, messages, progress)
            case _:
                return await self._workflow(command)

    async def _workflow(self, command: Command) -> Reply:
        match command.name:
            case "summarize":
                result = await self.client.run_workflow("summarize_text", command.text, max_words=command.max_words)
            case "translate":
                result = await self.client.run_workflow("translate_text", command.text, target_language=command.language)
            case "sentiment":
                result = await self.client.run_workflow("sentiment", command.text)
            case "classify":
                result = await self.client.run_workflow("classify", command.text, classify_by=list(command.labels))
            case "moderate":
                result = await self.client.run_workflow("moderation", command.text, threshold=MODERATION_THRESHOLD)
            case "entities":
                result = await self.client.run_workflow("extract_categorized_entities", command.text)
            case "reason":
                result = await self.client.run_workflow("solve_with_reasoning", command.text)
            case other:
                raise ValueError(f"no handler for command {other!r}")
        return Reply(render_result(result))

    def _conversation(self, history: Sequence[Message], message: Message) -> list[Message]:
        return [{"role": "system", "content": self.config.system_prompt}, *history, message]

    async def _chat(self, model: str, messages: list[Message], progress: Progress | None) -> Reply:
        result = await self._complete(model, messages, progress)
        if not result.content:
            return Reply("The model gave an empty answer. Please rephrase and try again.", outcome="error", model=result.model)
        return Reply(result.content, model=result.model, usage=result.usage)

    async def _complete(self, model: str, messages: list[Message], progress: Progress | None) -> ChatResult:
        """One completion: streamed when someone watches its progress, plain otherwise."""
        if progress is None:
            return await self.client.chat(model, messages, max_tokens=self.config.max_tokens)
        answer = ""
        async with self.client.stream_chat(model, messages, max_tokens=self.config.max_tokens) as stream:
            async for piece in stream:
                answer += piece
                await progress(answer)
        assert stream.result is not None  # set once iteration ends without error
        return stream.result
