"""Slack, on slack-bolt's AsyncApp: the `/io` slash command, @mentions, DMs and thread follow-ups.

Every listener acks first and works after, as Bolt's own examples do: a slash command is answered
through its `response_url`, a conversation in the thread of the message that started it (a
placeholder at once, edited at most once a second while the answer streams, more messages when it
outgrows one). Events are served over HTTP at `POST /slack/events` or over Socket Mode.

Slack delivers an event again when it thinks the first delivery failed, and a message that
mentions the bot in a channel arrives twice (`app_mention` and `message`); each message is answered
once, remembered here by event id and by channel and timestamp, and charged once, by the ledger's
idempotency key (the event id, or the slash command's trigger id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from core.chunks import ThrottledEdits
from core.client import Message
from core.commands import is_informational
from core.images import ImageError, ImageLimits, ImageSource
from core.service import Progress, Reply, Request, Service

from .slack_render import PLACEHOLDER, SlackMessage, answer_messages, from_slack, placeholder, plain, reply_messages

log = logging.getLogger("iobot.slack")

Payload = dict[str, Any]  # a JSON object from Slack: a command, an event, a message, a file

# Answers wait until no request is being acknowledged (up to this long), since Slack gives an
# acknowledgement 3 seconds and an answer takes seconds anyway. Without it, a burst of commands has
# every acknowledgement queue behind the answers already started (benchmarks/slack_ack.py).
ACK_PRIORITY = 1.0
EDIT_INTERVAL = 1.0  # seconds between edits of a streaming answer (chat.update is rate limited)
RESPONSE_URL_POSTS = 5  # Slack takes at most five posts to one response_url
THREAD_HISTORY = 50  # the newest messages of a thread sent along as context
THREAD_PAGES = 5  # conversations.replies pages (of 200) read at most
REMEMBERED = 10_000  # event ids, messages and threads remembered
ASKED_CHARS = 150  # of a slash command's text, repeated above its in-channel answer
CLOSE_GRACE = 5.0  # seconds that answers already computed get to be posted when the adapter closes
INTERRUPTED = "iobot was restarted before it could answer. Please ask again."
WORKING = "Working on it…"  # the acknowledgement, seen by the asker alone while the answer is worked out
# Message subtypes a person makes by writing; edits, deletions, joins and bots' messages have others.
WRITTEN = (None, "file_share", "thread_broadcast")


class SlackAdapter:
    def __init__(
        self,
        service: Service,
        *,
        bot_token: str,
        signing_secret: str | None,
        api_url: str,
        file_hosts: Sequence[str],
        image_limits: ImageLimits,
    ) -> None:
        self.service = service
        self._bot_token = bot_token
        self._signing_secret = signing_secret
        self._file_hosts = frozenset(host.lower() for host in file_hosts)
        self._image_limits = image_limits
        # No signing secret means Socket Mode, where Slack's own connection stands for the signature.
        self.bolt = AsyncApp(
            token=bot_token,
            signing_secret=signing_secret or "",
            request_verification_enabled=signing_secret is not None,
            name="iobot",
        )
        # Bolt's own Web API client (passing one in makes Bolt warn that SLACK_BOT_TOKEN goes unused),
        # pointed at `api_url`, with one connection pool that Bolt's per-request clients share too.
        self._session = aiohttp.ClientSession()
        client = self.bolt.client
        client.base_url = api_url
        client.session = self._session
        client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
        self.bolt.command("/io")(self._on_command)
        self.bolt.event("app_mention")(self._on_mention)
        self.bolt.event("message")(self._on_message)
        self._seen = _Recent(REMEMBERED)  # event ids and "channel:ts" of messages being or been answered
        self._threads = _Recent(REMEMBERED)  # "channel:thread_ts" of channel threads the bot answered in
        self._working: set[asyncio.Task[Any]] = set()
        self._acknowledging = 0  # HTTP requests Bolt is still answering
        self._acknowledged = asyncio.Event()  # set while that count is zero
        self._acknowledged.set()
        self._socket: AsyncSocketModeHandler | None = None

    # --- serving ---------------------------------------------------------------------------------

    def add_routes(self, web_app: web.Application) -> None:
        """`POST /slack/events` for the Events API and the slash command (Bolt checks signatures)."""
        if self._signing_secret is None:
            raise ValueError("Slack over HTTP needs the signing secret, or requests could not be verified")
        web_app.router.add_post("/slack/events", self._serve)

    async def _serve(self, request: web.Request) -> web.Response:
        self._acknowledging += 1
        self._acknowledged.clear()
        try:
            return await to_aiohttp_response(await self.bolt.async_dispatch(await to_bolt_request(request)))
        finally:
            self._acknowledging -= 1
            if not self._acknowledging:
                self._acknowledged.set()

    async def _after_acknowledgements(self) -> None:
        """Let every acknowledgement under way go out first (this request's own included)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACK_PRIORITY):
                await self._acknowledged.wait()

    async def start_socket_mode(self, app_token: str) -> None:
        """Connect over Socket Mode instead: no public URL needed; returns once connected."""
        self._socket = AsyncSocketModeHandler(self.bolt, app_token)
        await self._socket.connect_async()

    async def close(self) -> None:
        """Disconnect; give answers in progress `CLOSE_GRACE` seconds to be posted, then stop them.

        Call `Service.drain` first: what it lets finish is posted here, what it cancels tells the
        person it was interrupted.
        """
        if self._socket is not None:
            await self._socket.close_async()
        if self._working:
            _, pending = await asyncio.wait(self._working, timeout=CLOSE_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._session.close()

    @contextlib.asynccontextmanager
    async def _tracked(self) -> AsyncIterator[None]:
        """Mark the work after an ack, so that `close` can stop it."""
        task = asyncio.current_task()
        assert task is not None
        self._working.add(task)
        try:
            yield
        finally:
            self._working.discard(task)

    # --- the slash command -----------------------------------------------------------------------

    async def _on_command(
        self, ack: AsyncAck, command: Payload, respond: AsyncRespond, context: AsyncBoltContext
    ) -> None:
        text = from_slack(command.get("text", ""))
        await (ack() if is_informational(text) else ack(text=WORKING))
        async with self._tracked():
            await self._after_acknowledgements()
            user = command["user_id"]
            request = Request(user=_person(context, user), text=text, request_id=command.get("trigger_id"))
            try:
                reply = await self.service.handle(request)
            except asyncio.CancelledError:
                await respond(text=INTERRUPTED, response_type="ephemeral")
                raise
            if reply.outcome == "duplicate":
                return
            asked = None if reply.private else f"<@{user}> asked: {plain(_shorten(text, ASKED_CHARS))}"
            response_type = "ephemeral" if reply.private else "in_channel"
            for message in reply_messages(reply, asked=asked, max_messages=RESPONSE_URL_POSTS):
                response = await respond(**message, response_type=response_type)
                if response.status_code != 200:
                    log.warning("response_url refused an answer: HTTP %d %s", response.status_code, response.body)

    # --- conversations: mentions, DMs, thread follow-ups -----------------------------------------

    async def _on_mention(
        self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext
    ) -> None:
        if _written(event) and self._first_delivery(body, event):
            await self._converse(body, event, client, context)

    async def _on_message(
        self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext
    ) -> None:
        """A DM, or a message in a channel thread the bot answered in (a mention there also comes as app_mention)."""
        direct = event.get("channel_type") == "im"
        followed = "thread_ts" in event and f"{event['channel']}:{event['thread_ts']}" in self._threads
        if _written(event) and (direct or followed) and self._first_delivery(body, event):
            await self._converse(body, event, client, context)

    def _first_delivery(self, body: Payload, event: Payload) -> bool:
        """True once per event and per message; a retry, or the second event of one message, is False."""
        keys = [key for key in (body.get("event_id"), f"{event['channel']}:{event['ts']}") if key]
        if any(key in self._seen for key in keys):
            log.info("skipping a repeated delivery of %s", keys[0])
            return False
        for key in keys:
            self._seen.add(key)
        return True

    async def _converse(
        self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext
    ) -> None:
        """Answer a message in its thread: a placeholder at once, then the answer as it streams."""
        async with self._tracked():
            channel, direct = event["channel"], event.get("channel_type") == "im"
            answer = _ThreadAnswer(client, channel, event.get("thread_ts") or event["ts"])
            await self._after_acknowledgements()
            await answer.show([placeholder()])
            try:
                reply, notes = await self._ask(body, event, client, context, answer)
            except asyncio.CancelledError:  # stopped mid-answer, by a shutdown
                await answer.show(reply_messages(Reply(INTERRUPTED, outcome="error")))
                raise
            if reply.outcome == "duplicate":  # a retry the ledger caught (this process had not seen it)
                await answer.show([])
                return
            messages = reply_messages(reply, notes=notes)
            if reply.private and not direct:
                await answer.show([])
                for message in messages:
                    await client.chat_postEphemeral(
                        channel=channel, user=event["user"], thread_ts=answer.thread_ts, **message
                    )
                return
            await answer.show(messages)
            if not direct:
                self._threads.add(f"{channel}:{answer.thread_ts}")

    async def _ask(
        self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext,
        answer: _ThreadAnswer,
    ) -> tuple[Reply, list[str]]:
        """The reply to a message (its images and thread included), and notes for its footer."""
        images, notes, unreadable = await self._attachments(client, event.get("files", ()))
        if unreadable and not images:  # the person asked about images, none of which could be read
            return Reply("\n".join(unreadable), outcome="refused"), notes
        history: list[Message] = []
        if "thread_ts" in event:
            history, history_notes = await self._history(client, event, context)
            notes += history_notes
        request = Request(
            user=_person(context, event["user"]),
            text=from_slack(event.get("text", ""), context.bot_user_id),
            history=history,
            request_id=body.get("event_id"),
            images=images,
        )
        edits = ThrottledEdits(lambda text: answer.show(answer_messages(text)), EDIT_INTERVAL)
        return await self.service.handle(request, _unless_blank(edits.update)), notes + unreadable

    async def _history(
        self, client: AsyncWebClient, event: Payload, context: AsyncBoltContext
    ) -> tuple[list[Message], list[str]]:
        """The thread before this message as conversation turns, and a note if it could not be read."""
        recent: deque[Payload] = deque(maxlen=THREAD_HISTORY)
        cursor = None
        try:
            for _ in range(THREAD_PAGES):
                page = await client.conversations_replies(
                    channel=event["channel"], ts=event["thread_ts"], limit=200, cursor=cursor
                )
                recent.extend(message for message in page["messages"] if float(message["ts"]) < float(event["ts"]))
                cursor = (page.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    break
        except SlackApiError as error:
            said = error.response.get("error")
            log.warning("could not read thread %s in %s: %s", event["thread_ts"], event["channel"], said)
            return [], [f"I could not read this thread's earlier messages (Slack said: {said})."]
        return thread_turns(recent, context.bot_user_id, context.bot_id), []

    # --- files ---------------------------------------------------------------------------------------

    async def _attachments(
        self, client: AsyncWebClient, files: Sequence[Payload]
    ) -> tuple[list[ImageSource], list[str], list[str]]:
        """The images among a message's files, to download: (images, notes on other files, images refused).

        Nothing is downloaded here: the service checks the count against the vision model first,
        then downloads each within the process's image budget.
        """
        images: list[ImageSource] = []
        notes: list[str] = []
        unreadable: list[str] = []
        for file in files:
            if file.get("file_access") == "check_file_info":  # the event carries only the id
                try:
                    file = (await client.files_info(file=file["id"]))["file"]
                except SlackApiError as error:
                    unreadable.append(f"Could not read file {file['id']}: Slack said {error.response.get('error')}.")
                    continue
            name = file.get("name") or file["id"]
            if not file.get("mimetype", "").startswith("image/"):
                notes.append(f"{name} is not an image, so it was not read.")
                continue
            try:
                images.append(self._image_source(name, file))
            except ImageError as error:
                unreadable.append(str(error))
        return images, notes, unreadable

    def _image_source(self, name: str, file: Payload) -> ImageSource:
        """Where to download a file: with the bot token, from Slack's own file hosts and nowhere else."""
        url = file.get("url_private_download") or file.get("url_private")
        if not url:
            raise ImageError(f"Could not download {name}: Slack gave no link to it.", "address")
        if not self._is_file_host(url):
            raise ImageError(
                f"Could not download {name}: its link is not on Slack's file hosts, so it was not followed.", "address"
            )
        size = file.get("size") if isinstance(file.get("size"), int) else None
        if size is not None and size > self._image_limits.max_bytes:  # refused unread, as it would be anyway
            megabytes = self._image_limits.max_bytes / (1024 * 1024)
            raise ImageError(f"{name} is over the {megabytes:g} MB limit for images.", "too_large")
        return ImageSource(
            name,
            url,
            headers={"Authorization": f"Bearer {self._bot_token}"},
            size=size or None,
            # Slack's sign-in page: its answer when the token may not read files.
            html_refusal=(
                f"Could not download {name}: Slack sent a web page instead of the file. The app probably lacks "
                "the files:read scope: add it in the app's settings and reinstall the app."
            ),
        )

    def _is_file_host(self, url: str) -> bool:
        """https to a listed host; plain http only to a listed 127.0.0.1 (the tests' stand-in).

        Hosts are compared as sent (ASCII, punycode kept): decoding punycode can fail, and two
        spellings of one name must not differ in what they are allowed.
        """
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            return False
        host = parsed.raw_host.decode("ascii").lower()
        if host not in self._file_hosts:
            return False
        return parsed.scheme == "https" or (parsed.scheme == "http" and host == "127.0.0.1")


class _ThreadAnswer:
    """One answer in a thread: the messages showing it, edited in place as it grows or changes.

    `show` makes the thread show exactly the given messages: it edits the ones already posted that
    differ, posts any extra, and deletes any left over (`show([])` removes the answer).
    """

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str) -> None:
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self._posted: list[tuple[str, SlackMessage]] = []  # (ts, what it shows)

    async def show(self, messages: list[SlackMessage]) -> None:
        for index, message in enumerate(messages):
            if index == len(self._posted):
                response = await self.client.chat_postMessage(
                    channel=self.channel, thread_ts=self.thread_ts, **message
                )
                self._posted.append((response["ts"], message))
            elif self._posted[index][1] != message:
                ts = self._posted[index][0]
                await self.client.chat_update(channel=self.channel, ts=ts, **message)
                self._posted[index] = (ts, message)
        for ts, _ in self._posted[len(messages) :]:
            await self.client.chat_delete(channel=self.channel, ts=ts)
        del self._posted[len(messages) :]


class _Recent:
    """A set of strings that forgets its oldest when full."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)


def thread_turns(messages: Sequence[Payload], bot_user_id: str | None, bot_id: str | None) -> list[Message]:
    """Thread messages as conversation turns: the bot's as the assistant's, people's as the user's.

    Other bots, edits and placeholders are left out; consecutive messages of one side are joined,
    since some models insist that user and assistant alternate.
    """
    turns: list[Message] = []
    for message in messages:
        mine = message.get("user") == bot_user_id or (bot_id is not None and message.get("bot_id") == bot_id)
        if not mine and (message.get("bot_id") or message.get("subtype") not in WRITTEN):
            continue
        text = from_slack(message.get("text", ""), bot_user_id)
        if not text or text == from_slack(PLACEHOLDER):
            continue
        role = "assistant" if mine else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": f"{turns[-1]['content']}\n\n{text}"}
        else:
            turns.append({"role": role, "content": text})
    return turns


def _written(event: Payload) -> bool:
    """A message a person wrote: not a bot's (not ours either), not an edit, deletion or join."""
    return "user" in event and not event.get("bot_id") and event.get("subtype") in WRITTEN


def _person(context: AsyncBoltContext, user_id: str) -> str:
    """`slack:<team>:<user>`; an org-wide install on Enterprise Grid may send no team, only the org."""
    return f"slack:{context.team_id or context.enterprise_id}:{user_id}"


def _unless_blank(update: Progress) -> Progress:
    """The progress callback, skipping the empty start of a stream (Slack refuses an empty section)."""

    async def progress(text: str) -> None:
        if text.strip():
            await update(text)

    return progress


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
