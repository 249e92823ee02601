"""The delivery layer on its own, through a fake platform that records what it was asked to show."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

from core.client import Message, Usage
from core.delivery import (
    ANSWER_FILE,
    INTERRUPTED,
    MAX_ANSWER_MESSAGES,
    Answer,
    Delivered,
    Delivery,
    DeliveryFailed,
    InFlight,
    first_delivery,
    merge_turns,
    with_notes,
)
from core.errors import Outcome
from core.ledger import MemoryStore
from core.render import model_line
from core.service import Attachment, Reply

LIMIT = 10  # characters in one of the fake platform's messages


class FakeChat:
    """A `Port` whose messages are strings of at most `LIMIT` characters, kept by id as a platform keeps them."""

    name = "Chat"

    def __init__(self) -> None:
        self.messages: dict[int, str] = {}  # what the channel shows, oldest first
        self.calls: list[tuple[str, int | None, str | None]] = []  # (operation, message id, piece)
        self.posts_allowed: int | None = None  # posts that succeed before every further one fails
        self.failing: set[str] = set()  # operations that fail: "edit", "delete", "upload"
        self.uploads: dict[int, Attachment] = {}  # the files posted, by message id
        self.renderings = 0  # of streamed text: one per update the answer showed
        self.at_work = False  # whether the platform shows the bot at work (a typing indicator)
        self._next_id = 1

    def render(self, reply: Reply) -> list[str]:
        return self.render_text(" ".join([reply.text, *reply.notes]))

    def render_text(self, text: str) -> list[str]:
        self.renderings += 1
        return [text[start : start + LIMIT] for start in range(0, len(text), LIMIT)]

    def noted(self, piece: str, note: str) -> str:
        return f"{piece} ({note})"

    async def post(self, piece: str, after: int | None) -> int:
        assert after == (max(self.messages) if self.messages else None), "each piece follows the one before"
        if self.posts_allowed is not None:
            if self.posts_allowed == 0:
                raise DeliveryFailed("refused")
            self.posts_allowed -= 1
        handle, self._next_id = self._next_id, self._next_id + 1
        self.messages[handle] = piece
        self.calls.append(("post", handle, piece))
        return handle

    async def edit(self, handle: int, piece: str) -> None:
        if "edit" in self.failing:
            raise DeliveryFailed("edit refused")
        self.messages[handle] = piece
        self.calls.append(("edit", handle, piece))

    async def delete(self, handle: int) -> None:
        if "delete" in self.failing:
            raise DeliveryFailed("delete refused")
        del self.messages[handle]
        self.calls.append(("delete", handle, None))

    async def upload(self, attachment: Attachment, after: int | None) -> int:
        assert after == max([*self.messages, *self.uploads], default=None), "a file follows the answer's last message"
        if "upload" in self.failing:
            raise DeliveryFailed("upload refused")
        handle, self._next_id = self._next_id, self._next_id + 1
        self.uploads[handle] = attachment
        self.calls.append(("upload", handle, attachment.name))
        return handle

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        assert not self.at_work, "one sign at a time"
        self.at_work = True
        try:
            yield
        finally:
            self.at_work = False

    @property
    def shown(self) -> list[str]:
        return list(self.messages.values())

    def operations(self) -> list[str]:
        return [operation for operation, _, _ in self.calls]


@pytest.fixture
def chat() -> FakeChat:
    return FakeChat()


@pytest.fixture
def answer(chat: FakeChat) -> Answer[str, int]:
    return Answer(chat, "in the test channel", interval=0.2)


async def test_a_long_reply_is_split_to_the_platform_limit_and_delivered_in_order(chat, answer):
    delivery = await answer.finish(Reply("abcdefghij" * 2 + "xyz", notes=("n",)))
    assert delivery == Delivery(Delivered.ALL)
    assert chat.shown == ["abcdefghij", "abcdefghij", "xyz n"]


async def test_only_the_pieces_that_changed_are_edited(chat, answer):
    await answer.show(["one", "two", "three"])
    chat.calls.clear()
    await answer.show(["one", "TWO", "three"])
    assert chat.calls == [("edit", 2, "TWO")]
    assert chat.shown == ["one", "TWO", "three"]


async def test_extra_pieces_are_posted_and_surplus_ones_deleted(chat, answer):
    await answer.show(["one"])
    await answer.show(["one", "two", "three"])
    assert chat.shown == ["one", "two", "three"]
    chat.calls.clear()
    await answer.show(["uno"])
    assert chat.calls == [("edit", 1, "uno"), ("delete", 2, None), ("delete", 3, None)]
    await answer.show([])
    assert chat.shown == [] and not answer.posted


async def test_a_failed_edit_posts_that_piece_and_the_ones_after_it_anew_in_order(chat, answer, caplog):
    await answer.show(["one", "two", "three"])
    chat.failing.add("edit")
    await answer.show(["one", "TWO", "three", "four"])
    assert chat.shown == ["one", "TWO", "three", "four"]
    assert chat.operations()[3:] == ["delete", "delete", "post", "post", "post"]
    assert "posting it anew" in caplog.text


async def test_a_delete_that_fails_is_logged_and_forgotten(chat, answer, caplog):
    await answer.show(["one", "two"])
    chat.failing.add("delete")
    await answer.show(["one"])
    assert "could not delete a message in the test channel (delete refused)" in caplog.text
    chat.failing.clear()
    await answer.show([])
    assert chat.shown == ["two"], "not retried: the answer no longer counts it as its own"


async def test_what_could_not_be_posted_is_named_and_its_charge_logged(chat, answer, caplog):
    chat.posts_allowed = 2
    reply = Reply("x" * 35, model="m", usage=Usage(10, 1224, 1234))
    with caplog.at_level(logging.WARNING, logger="iobot.delivery"):
        delivery = await answer.finish(reply)
    assert delivery == Delivery(Delivered.PART, "refused")
    assert chat.shown == ["x" * 10, "x" * 10 + " (The rest of this answer could not be posted (Chat: refused).)"]
    assert "could not post an answer in the test channel (refused); its 1,234 tokens stay charged" in caplog.text


async def test_an_answer_nothing_of_which_could_be_posted_is_not_delivered(chat, answer):
    chat.posts_allowed = 0
    assert await answer.finish(Reply("hello")) == Delivery(Delivered.NONE, "refused")
    assert chat.shown == []


async def test_a_duplicate_takes_back_what_was_shown(chat, answer):
    await answer.show(["Thinking…"])
    delivery = await answer.finish(Reply("This request is already being answered.", outcome=Outcome.DUPLICATE, private=True))
    assert delivery.delivered is Delivered.NONE
    assert chat.shown == []


async def test_streaming_edits_are_throttled_and_the_whole_answer_always_lands(chat, answer):
    await answer.stream("   ")  # the blank start of a stream: platforms refuse empty messages
    assert chat.calls == []
    text = ""
    started = time.monotonic()
    for i in range(30):  # 30 pieces over about 0.6 s, 3 messages in all
        text += str(i % 10)
        await answer.stream(text)
        await asyncio.sleep(0.02)
    elapsed, updates = time.monotonic() - started, chat.renderings
    await answer.finish(Reply(text))
    assert 2 <= updates <= elapsed / 0.2 + 1, "at most one update per interval, not one per piece"
    assert "".join(chat.shown) == text


async def test_a_stream_that_fails_stops_and_the_finish_shows_everything(chat, answer, caplog):
    await answer.stream("first")
    chat.failing.add("edit")
    await asyncio.sleep(0.25)
    await answer.stream("first and more")
    await asyncio.sleep(0.25)
    await answer.stream("first and more and more")
    assert chat.operations() == ["post"], "after the failed edit nothing more is tried while streaming"
    assert "as it streamed (edit refused)" in caplog.text
    assert (await answer.finish(Reply("the whole answer"))).delivered is Delivered.ALL
    assert "".join(chat.shown) == "the whole answer"


def pieces_of(count: int) -> str:
    """A reply text the fake platform shows as exactly `count` messages."""
    return "".join(chr(ord("a") + index) * LIMIT for index in range(count))


async def test_a_reply_of_the_most_messages_allowed_is_posted_as_messages(chat, answer):
    text = pieces_of(MAX_ANSWER_MESSAGES)
    assert await answer.finish(Reply(text)) == Delivery(Delivered.ALL)
    assert "".join(chat.shown) == text and len(chat.shown) == MAX_ANSWER_MESSAGES
    assert chat.uploads == {}


async def test_a_longer_reply_shows_its_first_message_and_goes_up_whole_as_a_file(chat, answer):
    text = pieces_of(MAX_ANSWER_MESSAGES + 1)
    model, usage = "meta-llama/Llama-3.3-70B-Instruct", Usage(10, 1224, 1234)
    assert await answer.finish(Reply(text, model=model, usage=usage, notes=("n",))) == Delivery(Delivered.ALL)

    notes = ["n", f"The whole answer is in {ANSWER_FILE}.", model_line(model, usage)]
    assert chat.shown == ["aaaaaaaaaa" + "".join(f" ({note})" for note in notes)]
    assert list(chat.uploads.values()) == [Attachment("answer.md", text.encode(), "text/markdown")]
    assert chat.operations() == ["post", "upload"], "the file comes after the message that names it"


async def test_a_long_reply_that_streamed_keeps_only_its_first_message_beside_the_file(chat, answer):
    text = pieces_of(MAX_ANSWER_MESSAGES + 3)
    await answer.show(chat.render_text(text))  # the answer as it streamed, all of it
    first = min(chat.messages)
    await answer.finish(Reply(text))
    assert list(chat.messages) == [first], "the first message edited in place, the others deleted"
    assert chat.shown == [f"aaaaaaaaaa (The whole answer is in {ANSWER_FILE}.)"]
    assert [attachment.data for attachment in chat.uploads.values()] == [text.encode()]


async def test_a_long_reply_whose_file_is_refused_is_posted_as_all_its_messages(chat, answer, caplog):
    chat.failing.add("upload")
    text = pieces_of(MAX_ANSWER_MESSAGES + 2)
    with caplog.at_level(logging.WARNING, logger="iobot.delivery"):
        delivery = await answer.finish(Reply(text))
    assert delivery == Delivery(Delivered.ALL)
    assert "".join(chat.shown) == text and chat.uploads == {}
    assert "could not upload an answer in the test channel as a file (upload refused)" in caplog.text


async def test_a_long_refusal_or_error_is_read_in_place_not_as_a_file(chat, answer):
    text = pieces_of(MAX_ANSWER_MESSAGES + 1)
    await answer.finish(Reply(text, outcome=Outcome.ERROR))
    assert "".join(chat.shown) == text and chat.uploads == {}


async def test_a_replys_own_attachments_follow_its_messages_in_order(chat, answer):
    files = (Attachment("a.csv", b"x,y\n1,2\n", "text/csv"), Attachment("b.png", b"\x89PNG", "image/png"))
    assert await answer.finish(Reply("see the files", attachments=files)) == Delivery(Delivered.ALL)
    assert chat.shown == ["see the fi", "les"]
    assert list(chat.uploads.values()) == list(files)
    assert chat.operations() == ["post", "post", "upload", "upload"]


async def test_an_attachment_the_platform_refuses_leaves_the_answer_partly_delivered(chat, answer, caplog):
    chat.failing.add("upload")
    files = (Attachment("a.csv", b"1,2", "text/csv"),)
    delivery = await answer.finish(Reply("see the file", usage=Usage(5, 7, 12), attachments=files))
    assert delivery == Delivery(Delivered.PART, "upload refused")
    assert "".join(chat.shown) == "see the file"
    assert "could not post an answer in the test channel (upload refused); its 12 tokens stay charged" in caplog.text


async def test_reply_streams_progress_into_the_answer(chat, answer):
    async def ask(progress) -> Reply:
        await progress("so far")
        return Reply("done")

    assert await answer.reply(ask) == Reply("done")
    assert chat.shown == ["so far"]


async def test_the_platform_shows_the_bot_at_work_while_the_answer_is_worked_out(chat, answer):
    seen = []

    async def ask(progress) -> Reply:
        seen.append(chat.at_work)
        await progress("so far")
        seen.append(chat.at_work)
        return Reply("done")

    await answer.finish(await answer.reply(ask))
    assert seen == [True, True]
    assert not chat.at_work, "the sign ends with the work"


async def test_an_answer_in_flight_is_cancelled_after_the_grace_and_tells_the_person(chat, answer):
    in_flight = InFlight(grace=0.1)
    started = asyncio.Event()

    async def ask(progress) -> Reply:
        started.set()
        await asyncio.sleep(30)
        return Reply("too late")

    async def work() -> None:
        async with in_flight.track():
            await answer.finish(await answer.reply(ask))

    task = asyncio.create_task(work())
    await started.wait()
    assert in_flight.busy
    await asyncio.wait_for(in_flight.close(), timeout=5)
    assert task.cancelled() and not in_flight.busy
    assert "".join(chat.shown) == INTERRUPTED
    assert not chat.at_work


async def test_closing_lets_an_answer_that_finishes_within_the_grace_be_posted(chat, answer):
    in_flight = InFlight(grace=5)
    started = asyncio.Event()

    async def work() -> None:
        async with in_flight.track():
            started.set()
            await asyncio.sleep(0.1)
            await answer.finish(Reply("in time"))

    task = asyncio.create_task(work())
    await started.wait()
    await in_flight.close()
    assert task.done() and not task.cancelled()
    assert chat.shown == ["in time"]


async def test_work_started_in_flight_runs_on_its_own_is_waited_for_and_its_failure_logged(chat, answer, caplog):
    in_flight = InFlight(grace=5)
    release = asyncio.Event()

    async def work() -> None:
        await release.wait()
        await answer.finish(Reply("posted after its starter returned"))

    async def broken() -> None:
        raise RuntimeError("a bug in an answer")

    posting = in_flight.start(work(), "posting")
    failing = in_flight.start(broken(), "answering a mention")
    assert in_flight.busy and not posting.done()  # the code that started them has moved on
    with caplog.at_level(logging.ERROR, logger="iobot.delivery"):
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        release.set()
        await in_flight.close()
    assert posting.done() and "".join(chat.shown) == "posted after its starter returned"
    assert failing.done() and not in_flight.busy
    [record] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert record.getMessage() == "answering a mention failed" and record.exc_info is not None


async def test_each_event_is_taken_once_by_any_of_its_keys():
    store = MemoryStore()
    assert await first_delivery(store, "slack:Ev1", "slack:C1:1.0")
    assert not await first_delivery(store, "slack:Ev1", "slack:C1:1.0"), "a retry"
    assert not await first_delivery(store, "slack:Ev2", "slack:C1:1.0"), "the second event of one message"
    assert not await first_delivery(store, "slack:Ev2"), "its key was taken by the attempt before"
    assert await first_delivery(store, "discord:42")


def test_turns_of_one_side_in_a_row_are_one_turn_and_empty_ones_are_left_out():
    turns: list[Message] = [
        {"role": "user", "content": "The deploy failed."},
        {"role": "user", "content": ""},
        {"role": "user", "content": "It was the migration."},
        {"role": "assistant", "content": "part one"},
        {"role": "assistant", "content": "part two"},
        {"role": "user", "content": "Thanks"},
    ]
    assert merge_turns(turns) == [
        {"role": "user", "content": "The deploy failed.\n\nIt was the migration."},
        {"role": "assistant", "content": "part one\n\npart two"},
        {"role": "user", "content": "Thanks"},
    ]
    assert turns[0] == {"role": "user", "content": "The deploy failed."}, "the turns given are left as they were"


def test_an_adapters_notes_come_before_the_replys_own():
    reply = Reply("answer", notes=("Llama stood in for Qwen.",))
    assert with_notes(reply, ["a.pdf is not an image."]).notes == ("a.pdf is not an image.", "Llama stood in for Qwen.")
    assert with_notes(reply, []) is reply
