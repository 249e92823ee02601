"""Slack, on slack-bolt's AsyncApp: the `/io` slash command, @mentions, DMs, thread follow-ups, the
message shortcuts (Summarize, Translate, Ask iobot), the App Home tab and the AI app surface.

Every listener acks first and works after, as Bolt's own examples do: a slash command is answered
through its `response_url`, a conversation in the thread of the message that started it (a stream
opened at once and appended to at most once a second; where Slack refuses streams, a placeholder
edited as often, more messages when it outgrows one). Events are served over HTTP at
`POST /slack/events` or over Socket Mode.

Slack delivers an event again when it thinks the first delivery failed, and a message that
mentions the bot in a channel arrives twice (`app_mention` and `message`); each message is answered
once, remembered in the store by event id and by channel and timestamp, and charged once, by the
ledger's idempotency key (the event id, or the slash command's trigger id).

Slack's Web API can fail any call: an error in JSON, an error page that is not JSON (a text/plain
body reaches `SlackApiError.response.data` as a string, not a dict), no answer in time, a dropped
connection. None of them stops an answer: a thread that cannot be read is answered without its
history, a file that cannot be read is named, an edit that fails becomes a new message. What is
charged follows what was asked of the API: the stream or placeholder goes up before the question goes
to the API, so when Slack cannot take a message in that thread nothing is asked and nothing is charged. An
answer computed but then impossible to post stays charged (the API spent those tokens on the
account, and settled use is never taken back); core/delivery.py logs that as a warning with its
tokens, so an operator can make up for it with `iobot limits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from pydantic import SecretStr, field_validator, model_validator
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler, async_default_handlers
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from core.adapter import AdapterError
from core.attachments import AttachedFile, Vetted, refused, vet_attachments
from core.chunks import shorten
from core.client import Message
from core.commands import Command, is_informational
from core.delivery import Answer, Delivered, DeliveryFailed, InFlight, first_delivery, merge_turns, with_notes
from core.errors import Outcome
from core.images import ImageInput, ImageLimits
from core.ledger.store import Store
from core.service import Attachment, Progress, Reply, Request, Service
from core.settings import CommaList, PlatformSettings, env, http_url, split_commas

from .slack_home import home_figures, home_view
from .slack_render import (
    PLACEHOLDER,
    SlackMessage,
    answer_messages,
    context_block,
    from_slack,
    markdown_messages,
    markdown_of,
    placeholder,
    plain,
    reply_messages,
    streamable,
    streamed_reply_messages,
    to_markdown,
)

log = logging.getLogger("iobot.slack")

Payload = dict[str, Any]  # a JSON object from Slack: a command, an event, a message, a file

# Answers wait until no request is being acknowledged and none has come for ACK_QUIET seconds (up to
# ACK_PRIORITY in all), since Slack gives an acknowledgement 3 seconds and an answer takes seconds
# anyway. Without it, a burst of commands has acknowledgements queue behind the answers already
# started, and those of a burst's last requests behind every answer it started (benchmarks/slack_ack.py).
ACK_PRIORITY = 1.0
ACK_QUIET = 0.005
EDIT_INTERVAL = 1.0  # seconds between edits of a streaming answer (chat.update is rate limited)
# Slack takes at most five posts to one response_url, and none with a file: a longer answer there is cut.
RESPONSE_URL_POSTS = 5
THREAD_HISTORY = 50  # the newest messages of a thread sent along as context (with its first)
HISTORY_PAGE = 200  # messages per conversations.replies call, as Slack recommends
HISTORY_CALLS = 8  # conversations.replies calls for one message at most, however long its thread
WEB_API_TIMEOUT = 10.0  # seconds for one Web API call or response_url post
# What a Web API call or a response_url post can fail with: an error answer from Slack (JSON or
# not), no answer in time, a broken connection.
WEB_API_FAILURES = (SlackApiError, aiohttp.ClientError, TimeoutError)
ASKED_CHARS = 150  # of a slash command's text, repeated above its in-channel answer
WORKING = "Working on it…"  # the acknowledgement, seen by the asker alone while the answer is worked out
# Message subtypes a person makes by writing; edits, deletions, joins and bots' messages have others.
WRITTEN = (None, "file_share", "thread_broadcast")
MAX_REQUEST_BYTES = 1024 * 1024  # a request body Slack sends is a few kilobytes; more is refused unread
# The message shortcuts, by `callback_id` (as slack-manifest.yml declares them): the command each runs on the message.
SHORTCUTS = {"iobot_summarize": "summarize", "iobot_translate": "translate", "iobot_ask": "ask"}
# What Slack answers a post in a conversation the bot is not a member of (a private channel, a DM between people).
NOT_A_MEMBER = ("not_in_channel", "channel_not_found")
# Slack's AI app surface: a conversation there is a thread in the person's DM with the app, so it is
# answered as any DM thread is; its start gets a greeting and prompts a click sends as a message.
GREETING = "Hi! Ask me anything, or pick a suggestion below. Say `help` to see everything I can do."
# A prompt the adapter answers itself: today's messages of the channel the chat is open beside, summarized.
SUMMARIZE_CHANNEL = "Summarize this channel today"
SUGGESTED_PROMPTS = [
    {"title": "What can you do?", "message": "help"},
    {"title": "Ask a question", "message": "What are three good ways to start a meeting on time?"},
    {"title": "Translate", "message": "translate French Could we move our call to Friday afternoon?"},
    {"title": "My use today", "message": "usage"},
]
# Offered instead of the first prompt when the chat is open beside a channel.
CHANNEL_PROMPT = {"title": SUMMARIZE_CHANNEL, "message": SUMMARIZE_CHANNEL}
THINKING = "is thinking…"  # the thread's status while the answer is worked out
# What chat.startStream answers where streaming is not to be had: the answer then edits a placeholder.
STREAMING_REFUSED = ("not_allowed", "unknown_method", "method_deprecated", "not_allowed_token_type", "missing_scope")


class SlackSettings(PlatformSettings):
    """Slack over HTTP (bot token and signing secret) or, with an app token, over Socket Mode."""

    bot_token: SecretStr | None = env("SLACK_BOT_TOKEN", default=None)
    signing_secret: SecretStr | None = env("SLACK_SIGNING_SECRET", default=None)
    app_token: SecretStr | None = env("SLACK_APP_TOKEN", default=None)
    api_url: str = env("SLACK_API_URL", default="https://slack.com/api/")
    file_hosts: CommaList = env("SLACK_FILE_HOSTS", default="files.slack.com")

    _split_commas = field_validator("file_hosts", mode="before")(split_commas)
    _http_url = field_validator("api_url")(http_url)

    @field_validator("api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"  # slack_sdk joins method names onto it

    @model_validator(mode="after")
    def _pairs(self) -> SlackSettings:
        if self.bot_token and not (self.signing_secret or self.app_token):
            raise ValueError("SLACK_BOT_TOKEN is set but neither SLACK_SIGNING_SECRET nor SLACK_APP_TOKEN is")
        if (self.signing_secret or self.app_token) and not self.bot_token:
            raise ValueError("SLACK_BOT_TOKEN is required when SLACK_SIGNING_SECRET or SLACK_APP_TOKEN is set")
        return self

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None


def build(settings: SlackSettings, service: Service, *, state_dir: Path) -> SlackAdapter:
    """The adapter for these settings (`state_dir` is not needed: Slack keeps nothing on disk)."""
    assert settings.bot_token is not None, "only an enabled platform is built"
    return SlackAdapter(
        service,
        bot_token=settings.bot_token.get_secret_value(),
        signing_secret=settings.signing_secret.get_secret_value() if settings.signing_secret else None,
        app_token=settings.app_token.get_secret_value() if settings.app_token else None,
        api_url=settings.api_url,
        file_hosts=settings.file_hosts,
        image_limits=service.config.image_limits,
        store=service.store,
    )


class SlackAdapter:
    """Slack for the service: over HTTP (`routes()`) when it has a signing secret, else over Socket Mode."""

    name = "slack"

    def __init__(
        self,
        service: Service,
        *,
        bot_token: str,
        signing_secret: str | None,
        api_url: str,
        file_hosts: Sequence[str],
        image_limits: ImageLimits,
        store: Store,
        app_token: str | None = None,
        web_api_timeout: float = WEB_API_TIMEOUT,
    ) -> None:
        if signing_secret is None and app_token is None:
            raise ValueError("Slack over HTTP needs the signing secret, or requests could not be verified")
        self.service = service
        self.store = store  # events already taken, threads the bot follows
        self._bot_token = bot_token
        self._signing_secret = signing_secret
        self._app_token = app_token
        self._file_hosts = frozenset(host.lower() for host in file_hosts)
        self._image_limits = image_limits
        # One connection pool for Bolt's client and the per-request clients it derives from it.
        # slack_sdk applies its own timeout only to sessions it makes, so this one carries it.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=web_api_timeout))
        client = AsyncWebClient(
            base_url=api_url,
            session=self._session,
            retry_handlers=[*async_default_handlers(), AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
        )
        # No signing secret means Socket Mode, where Slack's own connection stands for the signature;
        # over HTTP `_serve` checks every request's signature before Bolt sees it, so Bolt does not again.
        # `authorize` answers with the identity `start()` checked, its token included (Bolt gives it to
        # each request's client; it would warn of a token in the client itself): left to itself, Bolt
        # would call auth.test for every request that arrives before its first call returns, hundreds
        # at once under a burst after a deploy.
        self._identity: AuthorizeResult | None = None

        async def authorize() -> AuthorizeResult:  # Bolt passes arguments by name: a method would be given `self`
            return await self._authorize()

        # Bolt answers Slack as soon as a listener returns. Otherwise it would run the listener in a
        # task of its own and look every 10 ms whether it had acknowledged, so that every slash
        # command waited 10 ms for its acknowledgement. Each listener therefore acknowledges (or just
        # returns) at once and hands its work to `in_flight.start`.
        self.bolt = AsyncApp(
            client=client,
            authorize=authorize,
            signing_secret=signing_secret or "",
            request_verification_enabled=False,
            process_before_response=True,
            name="iobot",
        )
        self.bolt.command("/io")(self._on_command)
        self.bolt.event("app_mention")(self._on_mention)
        self.bolt.event("message")(self._on_message)
        for callback_id in SHORTCUTS:
            self.bolt.message_shortcut(callback_id)(self._on_shortcut)
        self.bolt.event("app_home_opened")(self._on_home_opened)
        self.bolt.event("assistant_thread_started")(self._on_assistant_thread_started)
        self.bolt.event("assistant_thread_context_changed")(self._on_assistant_context_changed)
        self.in_flight = InFlight()
        self._streams = True  # answers stream until Slack refuses a stream
        self._acknowledging = 0  # HTTP requests Bolt is still answering
        self._acknowledged = asyncio.Event()  # set while that count is zero
        self._acknowledged.set()
        self._last_request = 0.0  # the event loop's time when the last request arrived
        self._socket: AsyncSocketModeHandler | None = None
        self._stopped = asyncio.Event()

    # --- serving ---------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """`POST /slack/events` for the Events API and the slash command (Bolt checks signatures);
        none over Socket Mode."""
        return [] if self._app_token else [web.post("/slack/events", self._serve)]

    async def start(self) -> None:
        """Check the bot token (`auth.test`), then connect over Socket Mode if that is the way in."""
        try:
            checked = await self.bolt.client.auth_test(token=self._bot_token)
        except SlackApiError as exc:
            raise AdapterError(f"Slack refused SLACK_BOT_TOKEN ({exc.response.get('error')})") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdapterError(f"cannot reach Slack at SLACK_API_URL ({type(exc).__name__})") from None
        self._identity = AuthorizeResult.from_auth_test_response(bot_token=self._bot_token, auth_test_response=checked)
        if self._app_token:  # no public URL needed; returns once connected
            self._socket = AsyncSocketModeHandler(self.bolt, self._app_token)
            await self._socket.connect_async()

    async def _authorize(self) -> AuthorizeResult:
        if self._identity is None:  # only a request served before start(), as tests do
            checked = await self.bolt.client.auth_test(token=self._bot_token)
            self._identity = AuthorizeResult.from_auth_test_response(bot_token=self._bot_token, auth_test_response=checked)
        return self._identity

    async def wait(self) -> None:
        """Slack ends only with `stop()`: Socket Mode reconnects by itself, HTTP is the server's."""
        await self._stopped.wait()

    async def stop(self) -> None:
        """Disconnect; give answers in progress a grace period to be posted, then stop them.

        Call `Service.drain` first, and stop the HTTP server: what the drain lets finish is posted
        here, what it cancels tells the person it was interrupted.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._socket is not None:
            await self._socket.close_async()
        await self.in_flight.close()
        await self._session.close()

    async def _serve(self, request: web.Request) -> web.Response:
        """Hand a request to Bolt once it is known to be Slack's: small, signed, and readable.

        Anything else is refused with 413, 401 or 400 before any work, and logged in one line:
        an oversized body unread, an unsigned one unparsed.
        """
        self._acknowledging += 1
        self._acknowledged.clear()
        self._last_request = asyncio.get_running_loop().time()
        try:
            raw = await _read_at_most(request, MAX_REQUEST_BYTES)
            if raw is None:
                return _refuse(413, f"request body over {MAX_REQUEST_BYTES} bytes")
            assert self._signing_secret is not None  # served over HTTP only with one
            text = _signed_text(raw, request.headers, self._signing_secret)
            if text is None:
                return _refuse(401, "missing, stale or wrong signature")
            try:  # Bolt parses the body as it builds the request: JSON, a form, or a form carrying JSON
                bolt_request = AsyncBoltRequest(body=text, query=request.query_string, headers=dict(request.headers))
            except Exception as error:  # whatever a body Bolt cannot read raises, it is the sender's fault
                return _refuse(400, f"malformed body ({type(error).__name__})")
            return await to_aiohttp_response(await self.bolt.async_dispatch(bolt_request))
        finally:
            self._acknowledging -= 1
            if not self._acknowledging:
                self._acknowledged.set()

    async def _after_acknowledgements(self) -> None:
        """Let every acknowledgement under way go out first (this request's own included), and a burst's rest."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACK_PRIORITY):
                while True:
                    await self._acknowledged.wait()
                    quiet_for = loop.time() - self._last_request
                    if quiet_for >= ACK_QUIET:
                        return
                    await asyncio.sleep(ACK_QUIET - quiet_for)

    # --- the slash command -----------------------------------------------------------------------

    async def _on_command(self, ack: AsyncAck, command: Payload, context: AsyncBoltContext) -> None:
        text = from_slack(command.get("text", ""))
        await (ack() if is_informational(text) else ack(text=WORKING))
        self.in_flight.start(self._answer_command(command, context, text), "answering /io")

    async def _answer_command(self, command: Payload, context: AsyncBoltContext, text: str) -> None:
        await self._after_acknowledgements()
        user = command["user_id"]
        asked = f"<@{user}> asked: {plain(shorten(text, ASKED_CHARS))}"
        port = _ResponseURL(AsyncWebhookClient(command["response_url"], session=self._session), asked)
        answer = Answer(port, "through /io's response_url", interval=EDIT_INTERVAL)
        request = Request(
            user=_person(context, user),
            text=text,
            request_id=command.get("trigger_id"),
            channel=_channel(context, command["channel_id"]),
            display_name=command.get("user_name", ""),
        )
        # Only the finished reply goes out: a response_url takes five posts and no edits.
        await answer.finish(await answer.reply(lambda _: self.service.handle(request)))

    # --- conversations: mentions, DMs, thread follow-ups -----------------------------------------

    async def _on_mention(self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext) -> None:
        if _written(event):
            self.in_flight.start(self._answer_once(body, event, client, context), "answering a mention")

    async def _on_message(self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext) -> None:
        """A DM, or a message in a channel thread the bot answered in (a mention there also comes as app_mention)."""
        if _written(event) and (event.get("channel_type") == "im" or "thread_ts" in event):
            self.in_flight.start(self._answer_message(body, event, client, context), "answering a message")

    async def _answer_message(self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext) -> None:
        direct = event.get("channel_type") == "im"
        if direct or await self.store.follows_thread(_thread(event["channel"], event["thread_ts"])):
            await self._answer_once(body, event, client, context)

    async def _answer_once(self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext) -> None:
        if await self._first_delivery(body, event):
            await self._converse(body, event, client, context)

    async def _first_delivery(self, body: Payload, event: Payload) -> bool:
        """True once per event and per message; a retry, or the second event of one message, is False."""
        keys = [f"slack:{event['channel']}:{event['ts']}"]
        if body.get("event_id"):
            keys.insert(0, f"slack:{body['event_id']}")
        return await first_delivery(self.store, *keys)

    async def _converse(self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext) -> None:
        """Answer a message in its thread: a stream opened at once (or a placeholder), then the answer as it arrives."""
        channel, direct = event["channel"], event.get("channel_type") == "im"
        recipient = None if direct else (str(context.team_id or context.enterprise_id), event["user"])
        thread_ts = event.get("thread_ts") or event["ts"]
        assistant = direct and "thread_ts" in event
        thread = _Thread(client, channel, thread_ts, streams=self._streams, recipient=recipient, assistant=assistant)
        answer = Answer(thread, f"in {channel}", interval=EDIT_INTERVAL)
        await self._after_acknowledgements()
        if not await self._open(answer, thread):  # before the API is asked anything, so nothing is charged
            return
        reply = await answer.reply(lambda progress: self._ask(body, event, client, context, thread.watching(progress)))
        if reply.private and not direct and reply.outcome != Outcome.DUPLICATE:
            await self._tell_privately(thread, event["user"], answer, reply)
            return
        delivery = await answer.finish(reply)
        with contextlib.suppress(DeliveryFailed):
            await thread.close()
        if delivery.delivered is Delivered.ALL and not direct:
            await self.store.follow_thread(_thread(channel, thread.thread_ts))

    async def _open(self, answer: Answer[SlackMessage, str], thread: _Thread) -> bool:
        """Show the answer's first message: a stream where Slack takes one, else the placeholder.

        Slack refuses streams to an app or workspace without them (`STREAMING_REFUSED`): then every
        answer after this one goes straight to the placeholder. False when not even that can be posted.
        """
        if thread.streams:
            try:
                await answer.show([thread.opening()])
                return True
            except DeliveryFailed as error:
                log.info("could not stream an answer in %s (%s); editing a placeholder instead", thread.channel, error.reason)
                thread.streams = False
                if error.reason in STREAMING_REFUSED:
                    self._streams = False
        try:
            await answer.show([thread.opening()])
        except DeliveryFailed as error:
            log.warning("could not post in %s (%s): the message is left unanswered", thread.channel, error.reason)
            return False
        return True

    async def _tell_privately(self, thread: _Thread, user: str, answer: Answer[SlackMessage, str], reply: Reply) -> None:
        """A reply for the asker's eyes only, in place of the placeholder; a public line if Slack refuses it."""
        try:
            for message in reply_messages(reply):
                await thread.client.chat_postEphemeral(channel=thread.channel, user=user, thread_ts=thread.thread_ts, **message)
        except WEB_API_FAILURES as error:
            said = _said(error)
            log.warning("could not answer privately in %s (%s)", thread.channel, said)
            await answer.finish(Reply(f"I could not send my reply privately (Slack: {said}).", outcome=Outcome.ERROR))
            return
        await answer.show([])

    async def _ask(
        self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext, progress: Progress
    ) -> Reply:
        """The reply to a message (its images and thread included), with notes for its footer."""
        in_assistant_chat = event.get("channel_type") == "im" and "thread_ts" in event
        if in_assistant_chat and from_slack(event.get("text", "")).lower() == SUMMARIZE_CHANNEL.lower():
            return await self._channel_summary(body, event, client, context, progress)
        vetted = await self._attachments(client, event.get("files", ()))
        if (refusal := refused(vetted)) is not None:  # the person asked about images, none of which could be read
            return refusal
        history: list[Message] = []
        history_notes: list[str] = []
        if "thread_ts" in event:
            history, history_notes = await self._history(client, event, context)
        request = Request(
            user=_person(context, event["user"]),
            text=from_slack(event.get("text", ""), context.bot_user_id),
            history=history,
            request_id=body.get("event_id"),
            images=vetted.images,
            channel=_channel(context, event["channel"]),
            display_name=_display_name(event),
            documents=vetted.documents,
        )
        return with_notes(await self.service.handle(request, progress), [*vetted.notes, *history_notes, *vetted.refusals])

    async def _history(
        self, client: AsyncWebClient, event: Payload, context: AsyncBoltContext
    ) -> tuple[list[Message], list[str]]:
        """The thread before this message as conversation turns, and a note on what did not go along."""
        try:
            messages, cut = await thread_before(client, event["channel"], event["thread_ts"], event["ts"])
        except WEB_API_FAILURES as error:
            said = _said(error)
            log.warning("could not read thread %s in %s: %s", event["thread_ts"], event["channel"], said)
            return [], [f"I could not read this thread's earlier messages (Slack: {said})."]
        replies = sum(message.get("ts") != event["thread_ts"] for message in messages)
        notes = [f"This thread is long: its first message and the newest {replies} went along."] if cut else []
        return thread_turns(messages, context.bot_user_id, context.bot_id), notes

    # --- message shortcuts: Summarize, Translate, Ask iobot ------------------------------------------

    async def _on_shortcut(self, ack: AsyncAck, shortcut: Payload, client: AsyncWebClient, context: AsyncBoltContext) -> None:
        """Answer in the message's thread, charged to the person who used the shortcut.

        The placeholder goes up first: in a conversation the bot is not in, Slack refuses it (and
        chat.postEphemeral too), so the person is told through the shortcut's response_url, which
        always reaches them, and nothing is asked or charged. Refusals reach them there too.
        """
        await ack()
        self.in_flight.start(self._answer_shortcut(shortcut, client, context), "answering a shortcut")

    async def _answer_shortcut(self, shortcut: Payload, client: AsyncWebClient, context: AsyncBoltContext) -> None:
        await self._after_acknowledgements()
        channel, message = shortcut["channel"]["id"], shortcut["message"]
        privately = _ResponseURL(AsyncWebhookClient(shortcut["response_url"], session=self._session), asked="")
        thread = _Thread(client, channel, message.get("thread_ts") or message["ts"])
        answer = Answer(thread, f"in {channel}", interval=EDIT_INTERVAL)
        try:
            await answer.show([placeholder()])
        except DeliveryFailed as error:  # before the API is asked anything, so nothing is charged
            log.info("could not answer a shortcut in %s (%s); telling its user privately", channel, error.reason)
            await self._tell_through(privately, Reply(_cannot_post(error.reason), outcome=Outcome.REFUSED, private=True))
            return
        reply = await answer.reply(lambda progress: self._shortcut_reply(shortcut, client, context, progress))
        if reply.private and reply.outcome != Outcome.DUPLICATE:
            await answer.show([])  # the placeholder goes; the reply is for the person alone
            await self._tell_through(privately, reply)
        else:
            await answer.finish(reply)

    async def _tell_through(self, response_url: _ResponseURL, reply: Reply) -> None:
        """A private reply through a shortcut's response_url: Slack shows it to that person alone, in any conversation."""
        await Answer(response_url, "through a shortcut's response_url", interval=EDIT_INTERVAL).finish(reply)

    async def _shortcut_reply(
        self, shortcut: Payload, client: AsyncWebClient, context: AsyncBoltContext, progress: Progress
    ) -> Reply:
        """The shortcut's command run on its message: on the whole thread for Summarize; with its images for Ask.

        The command is built, not parsed, so a message that starts with a command word is still the text.
        """
        name = SHORTCUTS[shortcut["callback_id"]]
        message = shortcut["message"]
        text = from_slack(message.get("text", ""), context.bot_user_id)
        notes: list[str] = []
        images: Sequence[ImageInput] = ()
        if name == "summarize" and "thread_ts" in message:
            text, notes = await self._thread_text(client, shortcut, context)
        elif name == "ask" and message.get("files"):
            vetted = await self._attachments(client, message["files"])
            if (refusal := refused(vetted)) is not None:
                return refusal
            images, notes = vetted.images, [*vetted.notes, *vetted.refusals]
        if not text and not images:
            return Reply("This message has no text for me to work on.", outcome=Outcome.USAGE, private=True)
        language = self.service.config.default_language if name == "translate" else ""
        request = Request(
            user=_person(context, shortcut["user"]["id"]),
            text=text,
            command=Command(name, text=text, language=language),
            request_id=shortcut.get("trigger_id"),
            images=images,
        )
        return with_notes(await self.service.handle(request, progress), notes)

    async def _thread_text(self, client: AsyncWebClient, shortcut: Payload, context: AsyncBoltContext) -> tuple[str, list[str]]:
        """The thread the shortcut's message is in, as it was when the shortcut was used, one `author: text`
        line per message; the message alone, with a note, when the thread cannot be read."""
        channel, message = shortcut["channel"]["id"], shortcut["message"]
        until = shortcut.get("action_ts") or f"{time.time():.6f}"
        try:
            messages, cut = await thread_before(client, channel, message["thread_ts"], until)
        except WEB_API_FAILURES as error:
            said = _said(error)
            log.warning("could not read thread %s in %s: %s", message["thread_ts"], channel, said)
            text = from_slack(message.get("text", ""), context.bot_user_id)
            return text, [f"I could not read this thread (Slack: {said}), so only this message was summarized."]
        lines = [
            f"{_author(each, context.bot_user_id)}: {text}"
            for each in messages
            if each.get("subtype") in (*WRITTEN, "bot_message")
            and (text := from_slack(each.get("text", ""), context.bot_user_id))
            and text != from_slack(PLACEHOLDER)
        ]
        notes = [f"This thread is long: its first message and the newest {len(messages) - 1} were summarized."] if cut else []
        return "\n".join(lines), notes

    # --- App Home ------------------------------------------------------------------------------------

    async def _on_home_opened(self, event: Payload, client: AsyncWebClient, context: AsyncBoltContext) -> None:
        if event.get("tab") == "home":  # not the Messages tab, the DM with the bot
            self.in_flight.start(self._publish_home(event, client, context), "publishing a Home tab")

    async def _publish_home(self, event: Payload, client: AsyncWebClient, context: AsyncBoltContext) -> None:
        """Publish the person's Home tab each time they open it, so its figures are today's."""
        figures = await home_figures(self.service, _person(context, event["user"]))
        try:
            await client.views_publish(user_id=event["user"], view=home_view(figures))
        except WEB_API_FAILURES as error:
            log.warning("could not publish the Home tab of %s (%s)", event["user"], _said(error))

    # --- the AI app surface --------------------------------------------------------------------------

    async def _on_assistant_thread_started(self, body: Payload, event: Payload, client: AsyncWebClient) -> None:
        self.in_flight.start(self._greet(body, event, client), "greeting an assistant thread")

    async def _greet(self, body: Payload, event: Payload, client: AsyncWebClient) -> None:
        """Greet the person in their new thread and offer prompts; costs nothing, asks the API nothing."""
        thread = event.get("assistant_thread") or {}
        channel, thread_ts = thread.get("channel_id"), thread.get("thread_ts")
        if not (channel and thread_ts) or not await first_delivery(self.store, f"slack:{body.get('event_id')}"):
            return
        viewing = await self._remember_viewed_channel(thread)
        prompts = [CHANNEL_PROMPT, *SUGGESTED_PROMPTS[1:]] if viewing else SUGGESTED_PROMPTS
        try:
            await client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=GREETING)
            await client.assistant_threads_setSuggestedPrompts(channel_id=channel, thread_ts=thread_ts, prompts=prompts)
        except WEB_API_FAILURES as error:
            log.warning("could not greet a new assistant thread in %s (%s)", channel, _said(error))

    async def _on_assistant_context_changed(self, event: Payload) -> None:
        """The person looks at another channel beside the thread: that is the one `SUMMARIZE_CHANNEL` reads."""
        thread = event.get("assistant_thread") or {}
        self.in_flight.start(self._remember_viewed_channel(thread), "noting the channel beside an assistant thread")

    async def _remember_viewed_channel(self, thread: Payload) -> str | None:
        """Keep the channel an AI app chat is open beside (in the store, so every replica knows it); returns it."""
        viewing = (thread.get("context") or {}).get("channel_id")
        if viewing and thread.get("channel_id") and thread.get("thread_ts"):
            await self.store.set_setting(_thread(thread["channel_id"], thread["thread_ts"]), "viewing", viewing)
        return viewing

    async def _channel_summary(
        self, body: Payload, event: Payload, client: AsyncWebClient, context: AsyncBoltContext, progress: Progress
    ) -> Reply:
        """`SUMMARIZE_CHANNEL` in an AI app chat: today's (UTC) messages of the channel beside it, summarized,
        charged to the person who asked. Nothing is asked of the API when the channel cannot be read."""
        viewing = await self.store.setting(_thread(event["channel"], event["thread_ts"]), "viewing")
        if not viewing:
            return Reply("Open this chat beside a channel first: that is the channel I summarize.", outcome=Outcome.USAGE)
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        try:
            page = await client.conversations_history(channel=viewing, oldest=f"{midnight.timestamp():.6f}", limit=HISTORY_PAGE)
        except WEB_API_FAILURES as error:
            said = _said(error)
            if said in NOT_A_MEMBER:
                return Reply(
                    "I am not in that channel, so I cannot read it: invite me there first (`/invite @iobot`).",
                    outcome=Outcome.REFUSED,
                )
            return Reply(f"I could not read that channel (Slack: {said}).", outcome=Outcome.ERROR)
        lines = [
            f"{_author(message, context.bot_user_id)}: {text}"
            for message in reversed(page["messages"])  # Slack lists them newest first
            if message.get("subtype") in (*WRITTEN, "bot_message")
            and (text := from_slack(message.get("text", ""), context.bot_user_id))
        ]
        if not lines:
            return Reply("Nothing was said in that channel today.", outcome=Outcome.USAGE)
        text = "\n".join(lines)
        notes = [f"Only the newest {len(lines)} messages of today were summarized."] if page.get("has_more") else []
        request = Request(
            user=_person(context, event["user"]),
            text=text,
            command=Command("summarize", text=text),
            request_id=body.get("event_id"),
            channel=_channel(context, event["channel"]),
        )
        return with_notes(await self.service.handle(request, progress), notes)

    # --- files ---------------------------------------------------------------------------------------

    async def _attachments(self, client: AsyncWebClient, files: Sequence[Payload]) -> Vetted:
        """A message's files sorted into images and documents to download, notes and refusals (see core/attachments.py).

        Nothing is downloaded here: the service checks the images' count against the vision model
        first, then downloads each file within the process's budget for files in flight.
        """
        described: list[AttachedFile] = []
        unreadable: list[str] = []
        for file in files:
            if file.get("file_access") == "check_file_info":  # the event carries only the id
                try:
                    file = (await client.files_info(file=file["id"]))["file"]
                except WEB_API_FAILURES as error:
                    unreadable.append(f"Could not read file {file['id']} (Slack: {_said(error)}).")
                    continue
            described.append(self._attachment(file))
        vetted = vet_attachments(described, self._image_limits, platform="Slack", may_download=self._is_file_host)
        return vetted._replace(refusals=[*unreadable, *vetted.refusals])

    def _attachment(self, file: Payload) -> AttachedFile:
        """A Slack file as core describes it: downloaded with the bot token (only from Slack's file hosts)."""
        name = file.get("name") or file["id"]
        return AttachedFile(
            name,
            file.get("mimetype", ""),
            size=file.get("size") if isinstance(file.get("size"), int) else None,
            url=file.get("url_private_download") or file.get("url_private"),
            headers={"Authorization": f"Bearer {self._bot_token}"},
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


class _Thread:
    """A conversation's thread, where its answer goes: the `Port` for Block Kit messages, each a `ts`.

    With `streams` the answer's first message is a stream: `chat.startStream` opens it, each edit
    that only adds text goes out as `chat.appendStream`, and the edit that adds the footer (or
    `close()`) ends it with `chat.stopStream`. Anything else (a later message, an edit that changes
    what was shown) is an ordinary `chat.postMessage` or `chat.update`. Outside a DM Slack wants to
    know whom a stream is for: `recipient`, (team, user).
    """

    name = "Slack"

    def __init__(
        self,
        client: AsyncWebClient,
        channel: str,
        thread_ts: str,
        *,
        streams: bool = False,
        recipient: tuple[str, str] | None = None,
        assistant: bool = False,
    ) -> None:
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self.streams = streams
        self.recipient = recipient
        self.assistant = assistant  # a DM thread: its status shows while the answer is worked out
        self._stream: str | None = None  # the `ts` of the message streaming now
        self._streamed = ""  # the markdown it shows so far
        self._arrived = ""  # the answer as it last arrived, shown or not (edits are throttled)

    def opening(self) -> SlackMessage:
        """What goes up before the question goes to the API: an empty stream, or the placeholder."""
        return markdown_messages("")[0] if self.streams else placeholder()

    def watching(self, progress: Progress) -> Progress:
        """`progress` that also keeps the answer as it arrives, so that an answer the API cut keeps all of it."""

        async def watched(text: str) -> None:
            self._arrived = text
            await progress(text)

        return watched

    def render(self, reply: Reply) -> list[SlackMessage]:
        if self.streams:
            return streamed_reply_messages(reply, arrived=to_markdown(self._arrived))
        return reply_messages(reply)

    def render_text(self, text: str) -> list[SlackMessage]:
        return markdown_messages(streamable(text)) if self.streams else answer_messages(text)

    def noted(self, piece: SlackMessage, note: str) -> SlackMessage:
        return {**piece, "blocks": [*piece["blocks"], context_block([plain(note)])]}

    async def post(self, piece: SlackMessage, after: str | None) -> str:
        if self.streams and after is None and not self._streamed and self._stream is None:
            team, user = self.recipient or (None, None)
            with _delivering():
                response = await self.client.chat_startStream(
                    channel=self.channel,
                    thread_ts=self.thread_ts,
                    markdown_text=markdown_of(piece) or None,
                    recipient_team_id=team,
                    recipient_user_id=user,
                )
            self._stream, self._streamed = str(response["ts"]), markdown_of(piece)
            return self._stream
        with _delivering():
            response = await self.client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts, **piece)
        return str(response["ts"])

    async def edit(self, handle: str, piece: SlackMessage) -> None:
        if handle == self._stream:
            markdown, footer = markdown_of(piece), piece["blocks"][1:]
            if markdown.startswith(self._streamed):
                added = markdown[len(self._streamed) :]
                with _delivering():
                    if footer:
                        await self.client.chat_stopStream(
                            channel=self.channel, ts=handle, markdown_text=added or None, blocks=footer
                        )
                        self._stream = None
                    elif added:
                        await self.client.chat_appendStream(channel=self.channel, ts=handle, markdown_text=added)
                self._streamed = markdown
                return
            await self.close()  # what was shown changes: the stream ends, and the message is updated
        with _delivering():
            await self.client.chat_update(channel=self.channel, ts=handle, **piece)

    async def close(self) -> None:
        """End the stream, if one is still open (an answer with no footer, or one being replaced)."""
        if self._stream is not None:
            handle, self._stream = self._stream, None
            with _delivering():
                await self.client.chat_stopStream(channel=self.channel, ts=handle)

    async def delete(self, handle: str) -> None:
        if handle == self._stream:
            self._stream = None
        with _delivering():
            await self.client.chat_delete(channel=self.channel, ts=handle)

    async def upload(self, attachment: Attachment, after: str | None) -> str:
        """Share a file in the thread: files.getUploadURLExternal, the bytes to the URL it gives, then
        files.completeUploadExternal. Slack shares it in the background, so the message carrying it
        has no `ts` yet: the file's id stands for it."""
        with _delivering():
            try:
                response = await self.client.files_upload_v2(
                    channel=self.channel, thread_ts=self.thread_ts, filename=attachment.name, content=attachment.data
                )
            except SlackRequestError as error:  # the upload URL did not take the bytes; it answers with a status only
                raise DeliveryFailed("the file upload was refused") from error
        return str(response["file"]["id"])

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """In a DM thread (Slack's AI app surface) the thread's status says it, cleared at the end;
        elsewhere the placeholder message, or the open stream, says it. The status is best effort."""
        if not self.assistant:
            yield
            return
        await self._set_status(THINKING)
        try:
            yield
        finally:
            await self._set_status("")

    async def _set_status(self, status: str) -> None:
        try:
            await self.client.assistant_threads_setStatus(channel_id=self.channel, thread_ts=self.thread_ts, status=status)
        except WEB_API_FAILURES as error:
            log.info("could not set the status of thread %s in %s (%s)", self.thread_ts, self.channel, _said(error))


class _ResponseURL:
    """A slash command's response_url: the `Port` that posts, but cannot edit or delete what it posted."""

    name = "Slack"

    def __init__(self, webhook: AsyncWebhookClient, asked: str) -> None:
        self.webhook = webhook
        self.asked = asked  # repeated above an answer in the channel

    def render(self, reply: Reply) -> list[SlackMessage]:
        response_type = "ephemeral" if reply.private else "in_channel"
        messages = reply_messages(reply, asked=None if reply.private else self.asked, max_messages=RESPONSE_URL_POSTS)
        return [{**message, "response_type": response_type} for message in messages]

    def render_text(self, text: str) -> list[SlackMessage]:
        return answer_messages(text)

    def noted(self, piece: SlackMessage, note: str) -> SlackMessage:
        return piece

    async def post(self, piece: SlackMessage, after: None) -> None:
        with _delivering():
            response = await self.webhook.send_dict(piece)
        if response.status_code != 200:
            raise DeliveryFailed(f"HTTP {response.status_code}: {shorten(str(response.body), 200)}")

    async def edit(self, handle: None, piece: SlackMessage) -> None:
        raise DeliveryFailed("a response_url post cannot be edited")

    async def delete(self, handle: None) -> None:
        raise DeliveryFailed("a response_url post cannot be deleted")

    async def upload(self, attachment: Attachment, after: None) -> None:
        raise DeliveryFailed("a response_url post cannot carry a file")

    def working(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # the acknowledgement said it


@contextlib.contextmanager
def _delivering() -> Iterator[None]:
    """Turn a failed Web API call into the `DeliveryFailed` the delivery layer handles."""
    try:
        yield
    except WEB_API_FAILURES as error:
        raise DeliveryFailed(_said(error)) from error


def _thread(channel: str, thread_ts: str) -> str:
    """A channel thread as the store follows it."""
    return f"slack:{channel}:{thread_ts}"


def thread_turns(messages: Sequence[Payload], bot_user_id: str | None, bot_id: str | None) -> list[Message]:
    """Thread messages as conversation turns: the bot's as the assistant's, people's as the user's.

    Other bots, edits, placeholders and the greeting of an AI app chat are left out; consecutive
    messages of one side are joined, since some models insist that user and assistant alternate.
    """
    turns: list[Message] = []
    for message in messages:
        mine = message.get("user") == bot_user_id or (bot_id is not None and message.get("bot_id") == bot_id)
        if not mine and (message.get("bot_id") or message.get("subtype") not in WRITTEN):
            continue
        text = from_slack(message.get("text", ""), bot_user_id)
        if text not in (from_slack(PLACEHOLDER), GREETING):
            turns.append({"role": "assistant" if mine else "user", "content": text})
    return merge_turns(turns)


async def thread_before(client: AsyncWebClient, channel: str, thread_ts: str, before: str) -> tuple[list[Payload], bool]:
    """A thread's first message and its newest replies before `before` (`THREAD_HISTORY` at most),
    oldest first, and whether replies between them were left out.

    conversations.replies pages a thread oldest first, so when the replies before `before` fill more
    than a page, the newest are found by narrowing the window (oldest, before): a window that still
    fills more than a page moves its start later, one holding fewer than wanted moves it earlier, by
    half the distance each time; `HISTORY_CALLS` calls in all, at most.
    """
    end = float(before)

    async def replies(oldest: float | None) -> tuple[list[Payload], bool]:
        page = await client.conversations_replies(
            channel=channel,
            ts=thread_ts,
            latest=before,
            limit=HISTORY_PAGE,
            oldest=None if oldest is None else f"{oldest:.6f}",
        )
        found = [m for m in page["messages"] if m.get("ts") != thread_ts and (oldest or 0) < float(m["ts"]) < end]
        return found, bool(page.get("has_more"))

    first = await client.conversations_replies(channel=channel, ts=thread_ts, latest=before, limit=HISTORY_PAGE)
    parent = [m for m in first["messages"][:1] if m.get("ts") == thread_ts]
    earlier = [m for m in first["messages"] if m.get("ts") != thread_ts and float(m["ts"]) < end]
    if not first.get("has_more"):
        return parent + earlier[-THREAD_HISTORY:], len(earlier) > THREAD_HISTORY
    # The replies up to `low` are more than a page from the end: the window's start lies between it and the end.
    low, high = float(earlier[-1]["ts"]) if earlier else float(thread_ts), end
    newest: list[Payload] = []
    crowded = earlier
    for _ in range(HISTORY_CALLS - 1):
        oldest = (low + high) / 2
        window, more = await replies(oldest)
        if more:
            low, crowded = oldest, window
        else:
            newest = window if len(window) > len(newest) else newest
            if len(window) >= THREAD_HISTORY:
                break
            high = oldest
    # A burst too dense to split in time: the start of the narrowest window that held more than a page.
    return parent + (newest or crowded)[-THREAD_HISTORY:], True


def _said(error: BaseException) -> str:
    """What went wrong with a Web API call, in a few words fit for a note or a log (no body, no token)."""
    if isinstance(error, SlackApiError):
        data = getattr(error.response, "data", None)
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
        status = getattr(error.response, "status_code", None) or getattr(error.response, "status", None)
        return f"HTTP {status}" if status else "an answer that could not be read"
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return "the connection failed"


def _cannot_post(reason: str) -> str:
    """Why a shortcut got no answer in its conversation, for the person who used it."""
    if reason in NOT_A_MEMBER:
        return (
            "I am not a member of this conversation, so I cannot answer there. Add me first (`/invite @iobot` "
            "in a channel), then use the shortcut again. Nothing was charged."
        )
    return f"I could not post in this conversation (Slack: {reason}). Nothing was charged; please try again."


def _author(message: Payload, bot_user_id: str | None) -> str:
    """Who wrote a thread message, as the summary names them: a person's Slack id, iobot, or another bot's name."""
    if bot_user_id and message.get("user") == bot_user_id:
        return "iobot"
    return str(message.get("user") or message.get("username") or message.get("bot_id") or "someone")


def _written(event: Payload) -> bool:
    """A message a person wrote: not a bot's (not ours either), not an edit, deletion or join."""
    return "user" in event and not event.get("bot_id") and event.get("subtype") in WRITTEN


def _person(context: AsyncBoltContext, user_id: str) -> str:
    """`slack:<team>:<user>`; an org-wide install on Enterprise Grid may send no team, only the org."""
    return f"slack:{context.team_id or context.enterprise_id}:{user_id}"


def _channel(context: AsyncBoltContext, channel_id: str) -> str:
    """`slack:<team>:<channel>`, as the store keeps a channel's settings."""
    return f"slack:{context.team_id or context.enterprise_id}:{channel_id}"


def _display_name(event: Payload) -> str:
    """The name a message's author shows under, when Slack sends their profile with the message; else empty."""
    profile = event.get("user_profile") or {}
    return str(profile.get("display_name") or profile.get("real_name") or profile.get("name") or "")


async def _read_at_most(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None if it is over `limit` bytes: refused by its Content-Length unread,
    or, sent in chunks without one, as soon as it passes the limit (aiohttp's `client_max_size`)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    try:
        return await request.clone(client_max_size=limit).read()
    except web.HTTPRequestEntityTooLarge:
        return None


def _signed_text(raw: bytes, headers: Mapping[str, str], signing_secret: str) -> str | None:
    """The body as text if Slack signed it (within the last 5 minutes), else None."""
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    # slack_sdk's check takes these as given: int() of a non-number, or comparing non-ASCII, would raise.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12 and signature.isascii()):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if SignatureVerifier(signing_secret).is_valid(text, timestamp, signature) else None


def _refuse(status: int, why: str) -> web.Response:
    log.info("refused a request to /slack/events: %s", why)
    return web.Response(status=status, text=f"{why}\n")
