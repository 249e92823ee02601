"""Delivering an answer to a chat platform, the platform-free half.

Every platform shows an answer the same way: something at once, the answer streamed into place by
throttled edits, split into as many messages as the platform's limit needs, and the whole answer
in a last edit that always lands. Platforms fail the same ways too: an edit that fails is replaced
by a new message, a message that cannot be posted ends the answer with a line saying the rest is
missing, and an answer the API computed but the platform would not take stays charged, which is
logged here, once, with its tokens.

An adapter supplies a `Port`: how to post, edit and delete one message on its platform, how to
render text as its messages (Slack: Block Kit dicts, Discord: strings) and how to show that the bot
is at work. This module also holds what
adapters otherwise each keep: the one turn merge, the duplicate check, and the answers in flight.

Files go out through the port too, each uploaded in the answer's place after its messages: a
reply's attachments, and the whole of an answer too long to read comfortably as messages (more than
`MAX_ANSWER_MESSAGES`), which is shown as its first message with all of it in `answer.md`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from .client import Message
from .errors import Outcome
from .ledger.store import Store
from .render import model_line
from .service import Attachment, Progress, Reply

log = logging.getLogger("iobot.delivery")

INTERRUPTED = "iobot was restarted before it could answer. Please ask again."
CLOSE_GRACE = 5.0  # seconds that answers already computed get to be posted when an adapter closes
# A finished answer that needs more messages than this is shown as its first message and uploaded
# whole as a file. Channels flooded with a dozen messages of one answer are what people complain
# about, while six (12,000 characters on Discord, 18,000 on Slack) are still read in place.
MAX_ANSWER_MESSAGES = 6
ANSWER_FILE = "answer.md"

Piece = TypeVar("Piece")  # one message as the platform takes it
Handle = TypeVar("Handle")  # a posted message, as the platform lets it be edited or deleted again


class DeliveryFailed(Exception):
    """The platform would not take a message; `reason` says why in a few words (no body, no token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Port(Protocol[Piece, Handle]):
    """One answer's place on a platform: a thread, a reply chain, an interaction's follow-ups.

    `post`, `edit` and `delete` raise `DeliveryFailed` when the platform refuses or cannot be reached.
    """

    name: str  # the platform, as the person knows it: "Slack"

    def render(self, reply: Reply) -> list[Piece]:
        """A finished reply (its notes and the model that answered included) as messages."""
        ...

    def render_text(self, text: str) -> list[Piece]:
        """An answer as it streams, text so far, as messages."""
        ...

    def noted(self, piece: Piece, note: str) -> Piece:
        """`piece` with a small line added under it."""
        ...

    async def post(self, piece: Piece, after: Handle | None) -> Handle:
        """Post a message after the answer's last one (`after`, None for the first)."""
        ...

    async def edit(self, handle: Handle, piece: Piece) -> None: ...

    async def delete(self, handle: Handle) -> None: ...

    async def upload(self, attachment: Attachment, after: Handle | None) -> Handle:
        """Post a message carrying the file after the answer's last one (`after`, None for the first)."""
        ...

    def working(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The platform's sign that the bot is at work (Discord's typing indicator), shown for as
        long as the block runs; `contextlib.nullcontext()` where the platform has none."""
        ...


class Delivered(StrEnum):
    ALL = "delivered"
    PART = "partly delivered"
    NONE = "not delivered"


@dataclass(frozen=True)
class Delivery:
    """How an answer ended up: all of it shown, its first messages only, or none; `reason` when not all."""

    delivered: Delivered
    reason: str | None = None


class Answer(Generic[Piece, Handle]):
    """One answer on a platform: the messages showing it, edited in place as it grows or changes.

    `where` names the place in logs ("in C0GENERAL"); `interval` is the least time between two
    edits while the answer streams (platforms rate-limit edits).
    """

    def __init__(self, port: Port[Piece, Handle], where: str, *, interval: float) -> None:
        self.port = port
        self.where = where
        self._interval = interval
        self._posted: list[tuple[Handle, Piece]] = []  # (the message, what it shows)
        self._streaming = True  # edits while the answer streams; stopped by the first that fails
        self._last_edit = float("-inf")

    @property
    def posted(self) -> bool:
        return bool(self._posted)

    async def show(self, pieces: Sequence[Piece], *, repost: bool = True) -> None:
        """Make the answer show exactly `pieces`: edit the messages that differ, post any extra, delete any left over.

        A message that cannot be edited is deleted and posted anew, with those after it (unless
        `repost` is False: then the failure is raised). Deleting is best effort. Raises
        `DeliveryFailed` when a message cannot be posted; what went up before it stays.
        """
        for index, piece in enumerate(pieces):
            if index < len(self._posted):
                handle, shown = self._posted[index]
                if shown == piece:
                    continue
                try:
                    await self.port.edit(handle, piece)
                    self._posted[index] = (handle, piece)
                    continue
                except DeliveryFailed as error:
                    if not repost:
                        raise
                    log.warning("could not edit an answer %s (%s); posting it anew", self.where, error.reason)
                    await self._remove_from(index)
            after = self._posted[-1][0] if self._posted else None
            self._posted.append((await self.port.post(piece, after), piece))
        await self._remove_from(len(pieces))

    async def stream(self, text: str) -> None:
        """The service's progress callback: show the answer so far, at most once per interval.

        A blank start is skipped (platforms refuse empty messages). After a failure the rest waits
        for `finish`, which shows the whole answer.
        """
        if not self._streaming or not text.strip() or time.monotonic() - self._last_edit < self._interval:
            return
        self._last_edit = time.monotonic()
        try:
            await self.show(self.port.render_text(text), repost=False)
        except DeliveryFailed as error:
            self._streaming = False
            log.warning("could not update an answer %s as it streamed (%s)", self.where, error.reason)

    async def reply(self, ask: Callable[[Progress], Awaitable[Reply]]) -> Reply:
        """`ask(progress)` with this answer's `stream` as progress, the platform showing the bot at work
        meanwhile; stopped by a shutdown, the answer says so."""
        try:
            async with self.port.working():
                return await ask(self.stream)
        except asyncio.CancelledError:
            await self.finish(Reply(INTERRUPTED, outcome=Outcome.ERROR, private=True))  # private where that is an option
            raise

    async def finish(self, reply: Reply) -> Delivery:
        """Show the finished reply; a duplicate (answered by its first delivery) takes back what is shown.

        The reply's attachments are uploaded after its messages. An answer that needs more than
        `MAX_ANSWER_MESSAGES` messages is shown as its first message and uploaded whole as
        `ANSWER_FILE`, or posted as all its messages if the upload fails.
        When the platform takes only the first messages, the last of them gets a line saying the
        rest is missing, and what the reply cost is logged as charged but not delivered.
        """
        if reply.outcome == Outcome.DUPLICATE:
            await self.show([])
            return Delivery(Delivered.NONE, "a repeated delivery")
        pieces = self.port.render(reply)
        try:
            too_long = reply.outcome == Outcome.OK and len(pieces) > MAX_ANSWER_MESSAGES  # not a refusal or an error
            if not (too_long and await self._show_as_file(reply, pieces[0])):
                await self.show(pieces)
            await self._upload(reply.attachments)
            return Delivery(Delivered.ALL)
        except DeliveryFailed as error:
            reason = error.reason
        charged = f"; its {reply.usage.total_tokens:,} tokens stay charged" if reply.usage else ""
        log.warning("could not post an answer %s (%s)%s", self.where, reason, charged)
        if not self._posted:
            return Delivery(Delivered.NONE, reason)
        handle, shown = self._posted[-1]
        if shown != pieces[-1]:
            note = f"The rest of this answer could not be posted ({self.port.name}: {reason})."
            with contextlib.suppress(DeliveryFailed):
                await self.port.edit(handle, self.port.noted(shown, note))
        return Delivery(Delivered.PART, reason)

    async def _show_as_file(self, reply: Reply, first: Piece) -> bool:
        """Show the answer's first message, with its notes and a line naming the file, then upload the
        whole answer as that file. False when the upload fails: the answer is then shown as messages."""
        notes = [*reply.notes, f"The whole answer is in {ANSWER_FILE}."]
        if reply.model:
            notes.append(model_line(reply.model, reply.usage))
        for note in notes:
            first = self.port.noted(first, note)
        await self.show([first])
        try:
            await self._upload([Attachment(ANSWER_FILE, reply.text.encode(), "text/markdown")])
        except DeliveryFailed as error:
            log.warning("could not upload an answer %s as a file (%s); posting it as messages", self.where, error.reason)
            return False
        return True

    async def _upload(self, attachments: Sequence[Attachment]) -> None:
        """Post each file after the answer's messages, in order; raises `DeliveryFailed` at the first refused."""
        after = self._posted[-1][0] if self._posted else None
        for attachment in attachments:
            after = await self.port.upload(attachment, after)

    async def _remove_from(self, index: int) -> None:
        """Delete the messages from `index` on; one that will not go is forgotten, not retried."""
        for handle, _ in self._posted[index:]:
            try:
                await self.port.delete(handle)
            except DeliveryFailed as error:
                log.warning("could not delete a message %s (%s)", self.where, error.reason)
        del self._posted[index:]


def with_notes(reply: Reply, notes: Iterable[str]) -> Reply:
    """The reply with the adapter's notes (files left out, history cut) before its own."""
    notes = tuple(notes)
    return dataclasses.replace(reply, notes=(*notes, *reply.notes)) if notes else reply


def merge_turns(turns: Iterable[Message]) -> list[Message]:
    """Conversation turns with empty ones left out and consecutive ones of one side joined.

    Some models insist that user and assistant alternate; an answer posted as several messages is
    one turn again.
    """
    merged: list[Message] = []
    for turn in turns:
        if not turn["content"]:
            continue
        if merged and merged[-1]["role"] == turn["role"]:
            merged[-1] = {"role": turn["role"], "content": f"{merged[-1]['content']}\n\n{turn['content']}"}
        else:
            merged.append({"role": turn["role"], "content": turn["content"]})
    return merged


async def first_delivery(store: Store, *keys: str) -> bool:
    """True once per event: False when any of its keys was claimed before (a retry, a replay, the
    second event of one message), on this replica or another."""
    claimed = [await store.claim(key) for key in keys]
    if all(claimed):
        return True
    log.info("skipping a repeated delivery of %s", keys[0])
    return False


class InFlight:
    """The answers an adapter is working on, so that closing it can let them finish, then stop them."""

    def __init__(self, grace: float = CLOSE_GRACE) -> None:
        self.grace = grace
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        """Mark the current task's work as an answer in flight for as long as the block runs."""
        task = asyncio.current_task()
        assert task is not None  # always inside a task under asyncio
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    def start(self, work: Coroutine[Any, Any, object], name: str) -> asyncio.Task[object]:
        """Run `work` as an answer in flight in a task of its own, so that the code that received it can
        return (and acknowledge) at once; a failure it did not handle is logged under `name`."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s failed", task.get_name(), exc_info=error)

    async def close(self) -> None:
        """Give the answers in flight `grace` seconds, then cancel the rest (each tells its person).

        Call it after `Service.drain`: what the drain let finish is posted here.
        """
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=self.grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
