"""The core service: one request from any platform in, one reply out.

Adapters turn a platform event into a `Request` and render the `Reply`; everything in between
(grammar, routing to a model that has quota and the right capability, charging the person in the
ledger, calling the API, turning failures into short messages) is here.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import httpx

from . import metrics
from .client import ChatResult, IOClient, Message, Usage, vision_message
from .commands import (
    CLEAR,
    COMMANDS,
    DEFAULT,
    DEFAULT_VISION_QUESTION,
    AgentTask,
    Call,
    Command,
    NoText,
    UsageError,
    help_text,
    parse_command,
    plain_word,
    shown,
    trim,
)
from .commands import INFORMATIONAL as INFORMATIONAL  # adapters read it from here
from .documents import (
    DEFAULT_DOCUMENT_QUESTION,
    Document,
    DocumentError,
    DocumentLimits,
    DocumentSource,
    join_documents,
    read_documents,
)
from .errors import IOIntelligenceError, Outcome, RateLimitError, Refusal, UserError
from .images import (
    DEFAULT_BUDGET,
    ImageBudget,
    ImageError,
    ImageInput,
    ImageLimits,
    prepare_images,
    public_image,
    read_local_image,
)
from .ledger import (
    DuplicateRequest,
    Ledger,
    LedgerError,
    ModelQuotaExceeded,
    QuotaExceeded,
    Reservation,
    Store,
    next_reset,
    time_until,
)
from .quotas import DEFAULT_CONTEXT_LENGTH, ModelLimits, QuotaTable
from .ratelimit import busy_message
from .render import code_table, render_agents, render_model_choices, render_models, short_model_name
from .tokens import (
    Fitted,
    InputTooLong,
    NoRoom,
    estimate_message_tokens,
    estimate_text_tokens,
    fit,
    image_side_within,
    image_tokens,
)

log = logging.getLogger("iobot.service")

# Called with the whole answer so far while it streams; adapters throttle their own edits.
Progress = Callable[[str], Awaitable[None]]

SYSTEM_PROMPT = (
    "You are iobot, an assistant in a team chat. Answer clearly and concisely. "
    "Use Markdown sparingly: short paragraphs, lists and code blocks."
)
# The agents wrap the text in their own instructions; with each command's answer room (see
# commands.AgentTask) this makes a workflow's (high) estimate, as its answer carries no usage.
WORKFLOW_PROMPT_OVERHEAD = 600
# The least room for an answer worth giving: when a person's budget, a model's quota or its context
# leaves less beside the question, the request is refused with what is left instead.
MIN_ANSWER_TOKENS = 256
RESERVE_ATTEMPTS = 3  # the whole room, then what the budget leaves, then what the model's quota leaves
CONTEXT = "the model's context"
UNEXPECTED_FAILURE = "Something went wrong on our side while answering. It has been logged; please try again."
ALREADY_ANSWERING = "This request is already being answered."
BUSY = "The bot is answering many requests right now. Please try again in a minute."
SHUTTING_DOWN = "The bot is restarting. Please try again in a minute."
IMAGES_WAITING = "_Your images are queued: other images are being read. They are next._"
# Images are never scaled below one Llama 3.2 Vision tile to make room: detail would be lost.
SMALLEST_IMAGE_SIDE = 560
# Names of the settings kept in the store: a person's chat model, a channel's standing instructions.
MODEL_SETTING = "model"
INSTRUCTIONS_SETTING = "instructions"


class NotEnoughLeft(QuotaExceeded):
    """What is left today of the person's budget or of a model's quota cannot hold the message and a short answer."""

    def __init__(self, refusal: QuotaExceeded, no_room: NoRoom) -> None:
        self.model = refusal.model if isinstance(refusal, ModelQuotaExceeded) else None  # None: the person's budget
        self.refusal = Refusal.BUDGET if self.model is None else Refusal.MODEL_QUOTA
        left = max(0, refusal.limit - refusal.used)
        if self.model is None:
            limit, whose, resets = (
                "your daily budget",
                f"You have {left:,} of your {refusal.limit:,} tokens left today",
                "Your budget resets",
            )
        else:
            name = short_model_name(self.model)
            limit, whose, resets = (
                f"{name}'s daily quota",
                f"{name} has {left:,} of its {refusal.limit:,} tokens left today",
                "It resets",
            )
        if no_room.needed - no_room.message_tokens > refusal.limit:  # not even an empty message would fit
            text = (
                f"{limit[0].upper()}{limit[1:]} of {refusal.limit:,} tokens is too small for any answer: even a short one "
                f"needs about {no_room.needed:,}. An operator can raise it."
            )
        elif no_room.needed > refusal.limit:  # not even a whole day's tokens would do
            text = str(
                InputTooLong(limit, NoRoom(needed=no_room.needed, room=refusal.limit, message_tokens=no_room.message_tokens))
            )
        else:
            wait = time_until(refusal.resets_at - datetime.now(UTC))
            text = f"{whose}; this message and a short answer need about {no_room.needed:,}. {resets} at 00:00 UTC ({wait})."
        super().__init__(text, used=refusal.used, limit=refusal.limit, needed=no_room.needed, resets_at=refusal.resets_at)


@dataclass(frozen=True)
class Request:
    """One thing a person asked for."""

    user: str  # "slack:<team>:<user>", "discord:<user>" or "console:<name>"
    text: str  # what they wrote, without the bot's mention
    command: Command | None = None  # set when the platform parsed it already (typed slash commands)
    history: Sequence[Message] = ()  # earlier turns of the conversation, oldest first
    request_id: str | None = None  # the platform's event or interaction id: a retry is not run twice
    images: Sequence[ImageInput] = ()  # attached images: where to download them, or (file name, bytes)
    documents: Sequence[DocumentSource] = ()  # attached text files and PDFs: their text is what the command works on
    local_files: bool = False  # `vision <path>` may read a local file (the console only)
    channel: str | None = None  # where it was asked, as the store keeps channels: "slack:<team>:<channel>", "discord:<channel>"
    display_name: str = ""  # how the channel knows the person, for replies that name them; their id when empty


@dataclass(frozen=True)
class Attachment:
    """A file that goes out with a reply; each platform shows it as a message carrying the file."""

    name: str  # the file name people see: "answer.md"
    data: bytes
    mime_type: str  # "text/markdown"


@dataclass(frozen=True)
class Reply:
    text: str  # neutral markdown (see render.py)
    outcome: Outcome = Outcome.OK
    private: bool = False  # only for the person who asked (ephemeral where the platform has it)
    model: str | None = None  # the model that answered, if one did
    usage: Usage | None = None
    notes: tuple[str, ...] = field(default=())  # remarks for the person, e.g. which model stood in
    attachments: tuple[Attachment, ...] = field(default=())  # files posted after the text
    refusal: Refusal | None = None  # why it was refused (a `refused` or `usage` outcome), counted per day in the store


@dataclass(frozen=True)
class ServiceConfig:
    model: str
    vision_model: str
    fallback_models: tuple[str, ...] = ()
    chat_models: tuple[str, ...] = ()  # what a person may pick with `model`; empty: the text models of the quota table
    admins: frozenset[str] = frozenset()  # the people who may change a channel's instructions
    max_tokens: int = 1024
    default_language: str = "English"  # what a platform's Translate shortcut or menu translates into
    system_prompt: str = SYSTEM_PROMPT
    image_limits: ImageLimits = ImageLimits()
    allow_loopback_images: bool = False  # tests serve images from 127.0.0.1
    image_budget_bytes: int = DEFAULT_BUDGET  # images and documents in flight, all requests together (see ImageBudget)
    document_limits: DocumentLimits = DocumentLimits()
    user_requests_per_minute: int = 20
    max_concurrent: int = 64  # requests being worked on at once; the rest wait for a slot
    queue_timeout: float = 60.0  # how long a request may wait for a slot before "busy"


class Service:
    def __init__(
        self,
        client: IOClient,
        ledger: Ledger,
        quotas: QuotaTable,
        config: ServiceConfig,
        http: httpx.AsyncClient,
        *,
        store: Store,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.store = store  # per-person request rates, counted by every process that shares the store
        self.quotas = quotas
        self.config = config
        self.chat_models = config.chat_models or tuple(row.name for row in quotas.text_models())
        self.http = http  # for images at public URLs: never carries a credential
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._image_budget = ImageBudget(config.image_budget_bytes)
        self._active: set[asyncio.Task] = set()
        self._closing = False

    async def handle(self, request: Request, progress: Progress | None = None) -> Reply:
        """Answer a request. Never raises (but for cancellation): every failure becomes a short reply."""
        started = time.perf_counter()
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        command, reply = "unparsed", None
        try:
            command, reply = await self._answer(request, progress)
            if reply.refusal is not None:
                await self._count_refusal(reply.refusal)
            return reply
        finally:
            if task is not None:
                self._active.discard(task)
            self._record(request, command, reply, time.perf_counter() - started)

    async def drain(self, grace: float) -> int:
        """Stop taking requests; let those in flight finish for `grace` seconds, then cancel the rest.

        Cancelled requests release their ledger reservations on the way out. Returns how many were cancelled.
        """
        self._closing = True
        pending = {task for task in self._active if not task.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        return len(pending)

    async def _answer(self, request: Request, progress: Progress | None) -> tuple[str, Reply]:
        """The command's name and its reply, every failure turned into a short message."""
        command: Command | None = None
        try:
            command = request.command or _parse(request)
            if self._closing:
                return command.name, Reply(SHUTTING_DOWN, outcome=Outcome.REFUSED, private=True, refusal=Refusal.RESTARTING)
            if COMMANDS[command.name].call is Call.HELP:
                return command.name, Reply(help_text(command.topic), private=True)
            per_minute = self.config.user_requests_per_minute
            wait = await self.store.take_request(request.user, per_minute)
            if wait:
                busy = busy_message(wait, per_minute)
                return command.name, Reply(busy, outcome=Outcome.REFUSED, private=True, refusal=Refusal.RATE_LIMIT)
            try:
                if self._slots.locked():  # every slot taken: wait for one, a while
                    async with asyncio.timeout(self.config.queue_timeout):
                        await self._slots.acquire()
                else:
                    await self._slots.acquire()  # returns at once
            except TimeoutError:
                return command.name, Reply(BUSY, outcome=Outcome.REFUSED, private=True, refusal=Refusal.BUSY)
            try:
                return command.name, await self._dispatch(request, command, progress)
            finally:
                self._slots.release()
        except Exception as exc:
            name = exc.spec.name if isinstance(exc, UsageError) else command.name if command else "unparsed"
            return name, self._failure(request, exc)

    def _failure(self, request: Request, exc: Exception) -> Reply:
        """The reply to a failure: what a `UserError` says, or that something went wrong (logged)."""
        match exc:
            case DuplicateRequest():
                return Reply(ALREADY_ANSWERING, outcome=Outcome.DUPLICATE, private=True)
            case ImageError():
                metrics.IMAGES_REFUSED.labels(exc.reason).inc()
            case DocumentError():
                metrics.DOCUMENTS_REFUSED.labels(exc.reason).inc()
            case IOIntelligenceError():
                log.warning("API call for %s failed: %s", request.user, exc)
        if isinstance(exc, UserError):
            refusal = exc.refusal if exc.outcome in (Outcome.REFUSED, Outcome.USAGE) else None
            return Reply(exc.user_message, outcome=exc.outcome, private=exc.private, refusal=refusal)
        log.error("unexpected failure answering %s", request.user, exc_info=exc)
        return Reply(UNEXPECTED_FAILURE, outcome=Outcome.ERROR)

    async def _count_refusal(self, refusal: Refusal) -> None:
        """Count a refusal in the store, where every replica's are added up; a store that fails costs the person nothing."""
        try:
            await self.store.record_refusal(datetime.now(UTC).date(), refusal)
        except LedgerError as exc:
            log.warning("could not count a refusal (%s): %s", refusal, exc)

    def _record(self, request: Request, command: str, reply: Reply | None, seconds: float) -> None:
        """One log line and the counters for each request; never the message's text, unless debugging."""
        platform = request.user.split(":", 1)[0]
        outcome = reply.outcome if reply else "cancelled"
        metrics.REQUESTS.labels(platform, command, outcome).inc()
        fields = {
            "request_id": request.request_id or uuid.uuid4().hex[:12],
            "platform": platform,
            "user": request.user,
            "command": command,
            "model": reply.model if reply else None,
            "tokens": reply.usage.total_tokens if reply and reply.usage else 0,
            "outcome": outcome,
            "ms": round(seconds * 1000),
        }
        log.info(" ".join(f"{key}={value}" for key, value in fields.items()), extra={"fields": fields})
        log.debug("request %s text: %r", fields["request_id"], request.text)

    async def _dispatch(self, request: Request, command: Command, progress: Progress | None) -> Reply:
        """Answer as the command's record says; images attached to anything but the bot's own views go to vision."""
        spec = COMMANDS[command.name]
        if request.documents and not spec.private:
            return await self._with_documents(request, command, progress)
        if spec.call is Call.VISION or (request.images and not spec.private):
            return await self._vision(request, command, progress)
        match spec.call:
            case AgentTask():
                return await self._workflow(request, command, spec.call)
            case Call.CHAT:
                message: Message = {"role": "user", "content": command.text}
                return await self._chat(request, message, images=False, progress=progress)
            case Call.MODEL:
                return await self._model(request.user, command.text)
            case Call.INSTRUCTIONS:
                return await self._instructions(request, command.text)
            case Call.AGENTS:
                return Reply(render_agents(await self.client.agents()), private=True)
            case Call.MODELS:
                return Reply(render_models(self.quotas, await self.ledger.model_totals()), private=True)
            case Call.USAGE:
                return Reply(await self._usage(request.user), private=True)
        raise ValueError(f"{command.name!r} is answered before dispatch")

    async def _with_documents(self, request: Request, command: Command, progress: Progress | None) -> Reply:
        """Read the attached documents, put their text after the person's words, and answer that.

        Nothing is reserved before the files are read: a file that cannot be read costs nothing, and
        when none of them (nor an image) can be, the refusals are the reply. The text is cut to what
        the answering model's context leaves beside the rest of the request, with a note.
        """
        documents, refusals = await read_documents(
            request.documents,
            self.config.document_limits,
            http=self.http,
            budget=self._image_budget,
            allow_loopback=self.config.allow_loopback_images,
        )
        for refusal in refusals:
            metrics.DOCUMENTS_REFUSED.labels(refusal.reason).inc()
        log.info(
            "%d document(s) for %s: %d characters read, %d refused",
            len(documents),
            request.user,
            sum(len(document.text) for document in documents),
            len(refusals),
        )
        notes = [*map(str, refusals), *(note for document in documents for note in document.notes)]
        if not documents and not request.images:
            return Reply("\n".join(map(str, refusals)), outcome=Outcome.REFUSED, refusal=Refusal.FILE)
        request = replace(request, documents=())
        if documents:
            request, command, cut = self._joined(request, command, documents)
            notes += cut
        reply = await self._dispatch(request, command, progress)
        return replace(reply, notes=(*notes, *reply.notes))

    def _joined(self, request: Request, command: Command, documents: list[Document]) -> tuple[Request, Command, list[str]]:
        """The request with the documents' text after the words the command works on, and notes on what was cut.

        The room is the answering model's context less what the rest of the call takes: for a
        chat, the system prompt and the whole answer room (older turns are cut first, as always);
        for an agent, its instructions and answer; for images, the smallest size each may be sent at.
        """
        spec = COMMANDS[command.name]
        system = estimate_message_tokens([{"role": "system", "content": self.config.system_prompt}])
        if spec.call is Call.VISION or request.images:
            model = self.config.vision_model
            images = len(request.images) + (1 if spec.call is Call.VISION else 0)  # `vision <url>` adds its own
            taken = system + self.config.max_tokens + images * image_tokens(SMALLEST_IMAGE_SIDE, SMALLEST_IMAGE_SIDE)
        elif isinstance(spec.call, AgentTask):
            model = self.config.model
            taken = WORKFLOW_PROMPT_OVERHEAD + spec.call.answer_tokens(command)
        else:
            model = self.config.model
            taken = system + self.config.max_tokens
        room = self._context(model) - taken - estimate_message_tokens([{"role": "user", "content": ""}])
        limit = f"{short_model_name(model)}'s context"
        if spec.call is not Call.VISION and request.images:  # the whole message is the question about the images
            text, notes = join_documents(trim(request.text) or DEFAULT_VISION_QUESTION, documents, room, limit)
            return replace(request, text=text), command, notes
        words = command.text or (DEFAULT_DOCUMENT_QUESTION if spec.call is Call.CHAT else "")
        text, notes = join_documents(words, documents, room, limit)
        return request, replace(command, text=text), notes

    def _context(self, model: str) -> int:
        """The model's context in tokens, as the quota table gives it."""
        row = self.quotas.get(model)
        return row.context_tokens if row else DEFAULT_CONTEXT_LENGTH

    async def _vision(self, request: Request, command: Command, progress: Progress | None) -> Reply:
        """Images (attached, at a URL or, in the console, in a file) checked, normalised, then asked about.

        Whether they fit the vision model's context is checked from their count before any is
        downloaded; they are scaled down as far as needed for that. Waiting for room in the image
        budget is shown as progress, and noted in the reply.
        """
        items: list[ImageInput] = list(request.images)
        if command.name == "vision":
            question = command.text
            if command.image.startswith(("http://", "https://")) or not request.local_files:
                items.insert(0, public_image(command.image))
            else:
                items.insert(0, read_local_image(command.image, self.config.image_limits))
        else:
            question = request.text.strip() or DEFAULT_VISION_QUESTION  # the whole message is the question
        system = await self._system_messages(request)
        limits = self._image_limits_for(min(len(items), self.config.image_limits.max_images), question, system)
        waiting_since: float | None = None

        async def on_wait() -> None:
            nonlocal waiting_since
            if waiting_since is None:
                waiting_since = time.monotonic()
                if progress is not None:
                    await progress(IMAGES_WAITING)

        prepared, refusals = await prepare_images(
            items,
            limits,
            budget=self._image_budget,
            http=self.http,
            allow_loopback=self.config.allow_loopback_images,
            on_wait=on_wait,
        )
        for refusal in refusals:
            metrics.IMAGES_REFUSED.labels(refusal.reason).inc()
        if not prepared:
            return Reply("\n".join(map(str, refusals)), outcome=Outcome.REFUSED, refusal=Refusal.IMAGE)
        log.info(
            "%d image(s) for %s: %d bytes sent, %d saved by normalising",
            len(prepared),
            request.user,
            sum(len(image.data) for image in prepared),
            sum(image.saved_bytes for image in prepared),
        )
        message = vision_message(question, [image.data_url for image in prepared])
        reply = await self._chat(request, message, images=True, progress=progress, system=system)
        metrics.IMAGE_BYTES_SAVED.inc(max(0, sum(image.saved_bytes for image in prepared)))
        notes = [*map(str, refusals), *(note for image in prepared for note in image.notes)]
        if waiting_since is not None:
            notes.append(f"Your images waited {time.monotonic() - waiting_since:.0f} s for room: other images were being read.")
        return replace(reply, notes=(*notes, *reply.notes))

    def _image_limits_for(self, count: int, question: str, system: list[Message]) -> ImageLimits:
        """The image limits for `count` images: sides small enough that all of them fit the vision model.

        Each image is counted at its largest (a square at the side bound), with the question, the
        `system` messages and room for the answer; the side is the largest that fits, up to the
        configured one. Refused, before anything is downloaded, when even small images cannot fit.
        """
        limits = self.config.image_limits
        model = self.config.vision_model
        context = self._context(model)
        text = estimate_message_tokens([*system, vision_message(question, [])])
        room = context - self.config.max_tokens - text
        side = min(limits.target_side, image_side_within(room // max(count, 1)))
        if side < SMALLEST_IMAGE_SIDE:
            most = room // image_tokens(SMALLEST_IMAGE_SIDE, SMALLEST_IMAGE_SIDE)
            ask = f"please send at most {most} at once" if most else "please shorten the question"
            raise ImageError(
                f"{count} images with this question do not fit {short_model_name(model)}, which takes "
                f"{context:,} tokens at most: {ask}.",
                "too_many_images",
            )
        return replace(limits, target_side=side)

    # --- chat, with fallback ---------------------------------------------------------------

    def candidates(self, images: bool, chosen: str | None = None) -> list[str]:
        """The model for the request first, then the fallbacks that can take it.

        Images go to the vision model. Text goes to the person's `chosen` model when they picked one,
        with the default model the first to stand in for it; else to the default model.
        """
        first = self.config.vision_model if images else chosen or self.config.model
        models = [first]
        if not images and first != self.config.model:
            models.append(self.config.model)
        for name in self.config.fallback_models:
            row = self.quotas.get(name)
            capable = row is not None and row.kind == "chat" and (row.images or not images)
            if capable and name not in models:
                models.append(name)
        return models

    async def _chat(
        self,
        request: Request,
        message: Message,
        *,
        images: bool,
        progress: Progress | None,
        system: list[Message] | None = None,
    ) -> Reply:
        """Answer with the first model that has quota, moving on when one is spent or rate limited.

        `system` is what `_system_messages` gives for the request (read here when not given).
        """
        if system is None:
            system = await self._system_messages(request)
        messages: list[Message] = [*system, *request.history, message]
        chosen = None if images else await self.chat_model(request.user)
        key = request.request_id
        passed_over: list[str] = []
        failures: list[Exception] = []
        for model in self.candidates(images, chosen):
            try:
                reservation, fitted, limited_by = await self._reserve(request.user, model, messages, key)
            except (ModelQuotaExceeded, InputTooLong) as exc:
                failures.append(exc)
                passed_over.append(model)
                continue
            except NotEnoughLeft as exc:
                if exc.model is None:  # the person's budget: no other model helps, but a shorter message might
                    raise next((f for f in failures if isinstance(f, InputTooLong)), exc) from None
                failures.append(exc)
                passed_over.append(model)
                continue
            key = None  # the key is spent once a reservation holds it; a fallback reserves without it
            started = time.perf_counter()
            try:
                result = await self._complete(model, fitted, progress)
            except RateLimitError as exc:
                await self.ledger.release(reservation)
                log.info("%s is rate limited; trying the next model", model)
                failures.append(exc)
                passed_over.append(model)
                continue
            except BaseException:
                await self.ledger.release(reservation)
                raise
            seconds = time.perf_counter() - started
            usage = await self._settle(reservation, result.usage, fitted.messages, result.content, seconds)
            if not result.content:
                return Reply("The model gave an empty answer. Please rephrase and try again.", outcome=Outcome.ERROR, model=model)
            notes = [_stood_in(model, passed_over)] if passed_over else []
            if fitted.dropped:
                which = (
                    "oldest message of this conversation was"
                    if fitted.dropped == 1
                    else f"{fitted.dropped} oldest messages of this conversation were"
                )
                notes.append(f"The {which} left out to fit {limited_by}.")
            if fitted.max_tokens < self.config.max_tokens and limited_by != CONTEXT:
                notes.append(f"The answer was kept to about {fitted.max_tokens:,} tokens to fit {limited_by}.")
            return Reply(result.content, model=model, usage=usage, notes=tuple(notes))
        raise failures[0]

    async def _reserve(self, user: str, model: str, messages: list[Message], key: str | None) -> tuple[Reservation, Fitted, str]:
        """Cut the conversation to what the model's context and today's limits leave, and reserve that.

        The first try fits the model's context and asks the ledger for the whole answer room. When
        the ledger refuses, its refusal says how much of the person's budget or the model's quota is
        left: the conversation is cut to that (older turns first, then the answer's room, down to
        `MIN_ANSWER_TOKENS`) and reserved again. The ledger's reservation stays the one atomic
        check, so a request that took the room meanwhile makes it refuse again, as it always did.
        Returns the reservation, what to send, and the limit that set its size.
        """
        row = self.quotas.get(model)
        room, limited_by = self._context(model), CONTEXT
        min_answer = min(MIN_ANSWER_TOKENS, self.config.max_tokens)
        refusal: QuotaExceeded | None = None
        for _ in range(RESERVE_ATTEMPTS):
            try:
                fitted = fit(messages, room, self.config.max_tokens, min_answer)
            except NoRoom as exc:
                if refusal is None:
                    raise InputTooLong(short_model_name(model), exc) from None
                raise NotEnoughLeft(refusal, exc) from None
            try:
                reservation = await self.ledger.reserve(
                    user=user,
                    model=model,
                    tokens=fitted.tokens,
                    model_limit=row.api_daily_tokens if row else None,
                    idempotency_key=key,
                )
                return reservation, fitted, limited_by
            except QuotaExceeded as exc:
                left = exc.limit - exc.used
                if left >= room:  # a limit changed between the two reads: nothing smaller to try
                    raise
                refusal, room = exc, left
                limited_by = "the model's daily quota" if isinstance(exc, ModelQuotaExceeded) else "your daily budget"
        assert refusal is not None
        raise refusal

    async def _complete(self, model: str, fitted: Fitted, progress: Progress | None) -> ChatResult:
        """One completion: streamed when someone watches its progress, plain otherwise."""
        if progress is None:
            return await self.client.chat(model, fitted.messages, max_tokens=fitted.max_tokens)
        answer = ""
        async with self.client.stream_chat(model, fitted.messages, max_tokens=fitted.max_tokens) as stream:
            async for piece in stream:
                answer += piece
                await progress(answer)
        assert stream.result is not None  # set once iteration ends without error
        return stream.result

    async def _settle(
        self, reservation: Reservation, usage: Usage | None, messages: list[Message], answer: str, seconds: float
    ) -> Usage:
        """Charge what the API reported, or an estimate (flagged as such) when it reported nothing."""
        if usage is not None:
            await self._charge(reservation, usage.prompt_tokens, usage.completion_tokens, estimated=False, seconds=seconds)
            return usage
        prompt, completion = estimate_message_tokens(messages), estimate_text_tokens(answer)
        await self._charge(reservation, prompt, completion, estimated=True, seconds=seconds)
        return Usage(prompt, completion, prompt + completion, estimated=True)

    async def _charge(self, reservation: Reservation, prompt: int, completion: int, *, estimated: bool, seconds: float) -> None:
        """Settle, with the answer's time (from the call's start to its whole answer) for the day's latencies."""
        await self.ledger.settle(
            reservation, prompt_tokens=prompt, completion_tokens=completion, estimated=estimated, seconds=seconds
        )
        metrics.TOKENS.labels(reservation.model, "prompt").inc(prompt)
        metrics.TOKENS.labels(reservation.model, "completion").inc(completion)

    async def _system_messages(self, request: Request) -> list[Message]:
        """The system prompt, then the channel's standing instructions when it has some."""
        messages: list[Message] = [{"role": "system", "content": self.config.system_prompt}]
        if request.channel is not None:
            instructions = await self.store.setting(request.channel, INSTRUCTIONS_SETTING)
            if instructions:
                messages.append({"role": "system", "content": instructions})
        return messages

    # --- a person's model, a channel's instructions: kept in the store, no API call ------------

    async def chat_model(self, user: str) -> str:
        """The model that answers the person's questions: the one they picked while it is offered, else the default."""
        chosen = await self.store.setting(user, MODEL_SETTING)
        return chosen if chosen is not None and chosen in self.chat_models else self.config.model

    async def _model(self, user: str, name: str) -> Reply:
        """`model`: the person's model and the choices; `model <name>` picks one; `model default` goes back."""
        if not name:
            current = await self.chat_model(user)
            which = "the default" if current == self.config.model else "your choice"
            text = f"**Your chat model:** {short_model_name(current)} ({which})."
            return Reply(f"{text}\n{self._model_choices(await self.ledger.model_totals())}", private=True)
        if plain_word(name) == DEFAULT:
            await self.store.set_setting(user, MODEL_SETTING, None)
            return Reply(f"Your chat model is the default again: {short_model_name(self.config.model)}.", private=True)
        model = self._chat_model_named(name)
        if model is None:
            row = self._quota_row_named(name)
            if row is not None and row.kind == "chat" and row.images:
                problem = f"{short_model_name(row.name)} is a vision model: it answers images attached to a message."
            else:
                problem = f"There is no chat model {shown(name)} to pick."
            return Reply(
                f"{problem}\n{self._model_choices(await self.ledger.model_totals())}",
                outcome=Outcome.REFUSED,
                private=True,
                refusal=Refusal.BAD_INPUT,
            )
        used = await self.ledger.model_totals()
        if self._quota_left(model, used) == 0:
            now = datetime.now(UTC)
            problem = (
                f"{short_model_name(model)} has no quota left today; it resets at 00:00 UTC "
                f"({time_until(next_reset(now) - now)})."
            )
            return Reply(
                f"{problem}\n{self._model_choices(used)}", outcome=Outcome.REFUSED, private=True, refusal=Refusal.MODEL_QUOTA
            )
        await self.store.set_setting(user, MODEL_SETTING, model)
        return Reply(
            f"Your chat model is now {short_model_name(model)}. `model {DEFAULT}` goes back to "
            f"{short_model_name(self.config.model)}.",
            private=True,
        )

    def _chat_model_named(self, name: str) -> str | None:
        """The offered model a person means: its full name or, when no other shares it, the part after the `/`."""
        wanted = name.casefold()
        for model in self.chat_models:
            if model.casefold() == wanted:
                return model
        matches = [model for model in self.chat_models if short_model_name(model).casefold() == wanted]
        return matches[0] if len(matches) == 1 else None

    def _quota_row_named(self, name: str) -> ModelLimits | None:
        """Any model of the quota table by its full or short name: to say why one not offered cannot be picked."""
        wanted = name.casefold()
        return next((row for row in self.quotas if wanted in (row.name.casefold(), short_model_name(row.name).casefold())), None)

    def _quota_left(self, model: str, used: dict[str, int]) -> int | None:
        """What is left today of the model's daily quota (None: the table gives it none)."""
        row = self.quotas.get(model)
        if row is None or row.api_daily_tokens is None:
            return None
        return max(0, row.api_daily_tokens - used.get(model, 0))

    def _model_choices(self, used: dict[str, int]) -> str:
        """The models a person may pick, with their quota left given today's `used` tokens by model."""
        choices = [(model, self._quota_left(model, used)) for model in self.chat_models]
        return render_model_choices(choices, default=self.config.model)

    async def _instructions(self, request: Request, text: str) -> Reply:
        """`instructions`: the channel's standing instructions; an admin changes them, and the channel is told who."""
        if request.channel is None:
            return Reply(
                "Instructions belong to a channel, and this request came from none.",
                outcome=Outcome.REFUSED,
                private=True,
                refusal=Refusal.OTHER,
            )
        if not text:
            current = await self.store.setting(request.channel, INSTRUCTIONS_SETTING)
            if not current:
                return Reply("This channel has no standing instructions.", private=True)
            return Reply(f"**This channel's standing instructions:**\n{_quoted(current)}", private=True)
        if request.user not in self.config.admins:
            return Reply(
                "Only iobot's admins may change this channel's instructions; `instructions` shows them.",
                outcome=Outcome.REFUSED,
                private=True,
                refusal=Refusal.OTHER,
            )
        who = shown(request.display_name or request.user)
        if plain_word(text) == CLEAR:
            await self.store.set_setting(request.channel, INSTRUCTIONS_SETTING, None)
            return Reply(f"{who} cleared this channel's standing instructions.")
        await self.store.set_setting(request.channel, INSTRUCTIONS_SETTING, text)
        return Reply(f"{who} changed this channel's standing instructions. From now on, answers here follow:\n{_quoted(text)}")

    # --- agents ----------------------------------------------------------------------------

    async def _workflow(self, request: Request, command: Command, task: AgentTask) -> Reply:
        """Run an agent task, charged to the chat model at an estimate (workflow answers carry no usage).

        The reply names that model and that estimate, so its footer and log line show what the ledger charged.
        """
        model = self.config.model
        row = self.quotas.get(model)
        prompt = estimate_text_tokens(command.text) + WORKFLOW_PROMPT_OVERHEAD
        answer_room = task.answer_tokens(command)
        context = self._context(model)
        if prompt + answer_room > context:
            no_room = NoRoom(needed=prompt + answer_room, room=context, message_tokens=estimate_text_tokens(command.text))
            raise InputTooLong(short_model_name(model), no_room)
        reservation = await self.ledger.reserve(
            user=request.user,
            model=model,
            tokens=prompt + answer_room,
            model_limit=row.api_daily_tokens if row else None,
            idempotency_key=request.request_id,
        )
        started = time.perf_counter()
        try:
            result = await self.client.run_workflow(task.task, command.text, **task.arguments(command))
        except BaseException:
            await self.ledger.release(reservation)
            raise
        seconds = time.perf_counter() - started
        text = task.render(result)
        completion = estimate_text_tokens(text)
        await self._charge(reservation, prompt, completion, estimated=True, seconds=seconds)
        return Reply(text, model=model, usage=Usage(prompt, completion, prompt + completion, estimated=True))

    # --- accounting views ------------------------------------------------------------------

    async def _usage(self, user: str) -> str:
        rows = await self.ledger.usage(user=user)
        used = await self.ledger.used_today(user=user)
        limit = await self.ledger.user_limit(user)
        now = datetime.now(UTC)
        lines = [f"**Your use today** ({now.date().isoformat()}, UTC)"]
        if rows:
            table = [(short_model_name(r.model), f"{r.requests:,}", f"{r.total_tokens:,}") for r in rows]
            lines.append(code_table(("model", "requests", "tokens"), table))
        left = max(0, limit - used)
        lines.append(
            f"Used {used:,} of your {limit:,} tokens; {left:,} left. Resets at 00:00 UTC ({time_until(next_reset(now) - now)})."
        )
        return "\n".join(lines)


def _quoted(text: str) -> str:
    """Text a person wrote shown as a quote, every line of it."""
    return "\n".join(f"> {line}" for line in text.split("\n"))


def _parse(request: Request) -> Command:
    """The person's command. Files attached stand in for its text: `summarize` with a PDF summarizes the
    PDF, and files with no words at all are a question about them."""
    if not trim(request.text) and (request.images or request.documents):
        return Command("ask")
    try:
        return parse_command(request.text)
    except NoText as missing:
        if not request.documents:
            raise
        return missing.command


def _stood_in(model: str, passed_over: list[str]) -> str:
    names = ", ".join(short_model_name(name) for name in passed_over)
    return f"Answered by {short_model_name(model)}: {names} had no quota left, was busy or could not fit the conversation."
