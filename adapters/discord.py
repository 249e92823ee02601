"""Discord: @mentions, DMs, replies to the bot, slash commands and message context menus, answered by the core service.

discord.py speaks the protocol. This module decides which messages are for the bot and who may use
it, turns a message (its text without the mention, its images, the reply chain above it), a slash
command or a context menu used on a message into a `Request`, and shows the `Reply`: streamed into
place while the API answers, split at 2000 characters without breaking code blocks, and never
pinging anyone.

Application commands install to servers and to people (a user install), and work in servers, DMs
and group DMs. Where the bot is not a member (a user install used in someone else's server) it can
only answer through the interaction, which is how every slash command and menu is answered anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import aiohttp
import discord
import yarl
from aiohttp import web
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import Route
from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from core.adapter import AdapterError
from core.attachments import AttachedFile, Vetted, refused, vet_attachments
from core.chunks import FENCE, split_message
from core.client import Message
from core.commands import COMMANDS, DEFAULT, Command, CommandSpec, Option, OptionKind, UsageError
from core.delivery import Answer, DeliveryFailed, InFlight, first_delivery, merge_turns, with_notes
from core.errors import Outcome
from core.images import ImageLimits
from core.ledger.store import Store
from core.render import model_line, reveal_links
from core.service import INFORMATIONAL, Attachment, Progress, Reply, Request, Service
from core.settings import PlatformSettings, env, http_url

log = logging.getLogger("iobot.discord")

NO_PINGS = discord.AllowedMentions.none()
MESSAGE_LIMIT = 2000
NOTE_CHARS = 500  # of a note added under a message, so that most of the message stays
MIN_PIECE = 160  # characters of a message's text kept whatever notes are added under it
EDIT_INTERVAL = 1.5  # seconds between edits of a streaming answer: Discord rate-limits edits per channel
HISTORY_MESSAGES = 20  # of a reply chain; the service then trims the oldest to fit the model's context
COMMANDS_HASH_FILE = "iobot-discord-commands.sha256"
MENTION_NEEDED = "Mention me in your reply so that I can read it."  # said when Discord withheld a reply's text
# What the bot needs in a channel: see it, read the reply chain, answer (in threads too, a long answer as a file).
PERMISSIONS = discord.Permissions(
    view_channel=True, read_message_history=True, send_messages=True, send_messages_in_threads=True, attach_files=True
)


IdList = Annotated[list[int], NoDecode]  # a comma list of Discord ids (snowflakes)
ShardCount = int | Literal["auto"]  # how many shards the bot runs in all; `auto` asks Discord
# Gateway close codes about sharding: the shard sent is not valid; the bot is in too many servers for its shards.
INVALID_SHARD, SHARDING_REQUIRED = 4010, 4011


class DiscordSettings(PlatformSettings):
    """The Discord bot: its token, where Discord is, and who may use the bot."""

    bot_token: SecretStr | None = env("DISCORD_BOT_TOKEN", default=None)
    api_url: str = env("DISCORD_API_URL", default="https://discord.com/api/v10")
    gateway_url: str = env("DISCORD_GATEWAY_URL", default="wss://gateway.discord.gg/")
    # Who may use the bot: empty allow-lists mean everyone, a block always wins.
    allowed_guilds: IdList = env("DISCORD_ALLOWED_GUILDS", default="")
    blocked_guilds: IdList = env("DISCORD_BLOCKED_GUILDS", default="")
    allowed_channels: IdList = env("DISCORD_ALLOWED_CHANNELS", default="")
    blocked_channels: IdList = env("DISCORD_BLOCKED_CHANNELS", default="")
    allowed_roles: IdList = env("DISCORD_ALLOWED_ROLES", default="")
    blocked_roles: IdList = env("DISCORD_BLOCKED_ROLES", default="")
    allowed_users: IdList = env("DISCORD_ALLOWED_USERS", default="")
    blocked_users: IdList = env("DISCORD_BLOCKED_USERS", default="")
    allow_dms: bool = env("DISCORD_ALLOW_DMS", default=True)
    # False: connect without the privileged Message Content intent, which needs Discord's approval for
    # bots in 100 or more servers. Mentions, DMs, slash commands and context menus still carry text.
    message_content: bool = env("DISCORD_MESSAGE_CONTENT", default=True)
    # Sharding: unset runs one shard; a count (or `auto`) and the ids this process runs split the bot's servers.
    shard_count: ShardCount | None = env("DISCORD_SHARD_COUNT", default=None)
    shard_ids: IdList = env("DISCORD_SHARD_IDS", default="")

    _http_url = field_validator("api_url")(http_url)

    @field_validator(
        "allowed_guilds",
        "blocked_guilds",
        "allowed_channels",
        "blocked_channels",
        "allowed_roles",
        "blocked_roles",
        "allowed_users",
        "blocked_users",
        "shard_ids",
        mode="before",
    )
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        items = [item.strip() for item in value.split(",") if item.strip()]
        wrong = [item for item in items if not (item.isascii() and item.isdigit())]
        if wrong:
            raise ValueError(f"must be a comma list of numeric Discord ids; not ids: {', '.join(wrong)}")
        return [int(item) for item in items]

    @field_validator("gateway_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @field_validator("shard_count", mode="before")
    @classmethod
    def _count(cls, value: object) -> object:
        text = "" if value is None else str(value).strip().lower()
        if text in ("", "auto"):
            return text or None
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise ValueError("must be a number of shards (1 or more) or auto")
        return int(text)

    @model_validator(mode="after")
    def _shards(self) -> DiscordSettings:
        ids, count = self.shard_ids, self.shard_count
        if ids and count is None:
            raise ValueError("DISCORD_SHARD_IDS is set but DISCORD_SHARD_COUNT is not: shard ids count from a known total")
        if ids and count == "auto":
            raise ValueError(
                "DISCORD_SHARD_IDS needs a number in DISCORD_SHARD_COUNT, not auto: which shards are which depends on the total"
            )
        if isinstance(count, int) and (beyond := [str(id_) for id_ in ids if id_ >= count]):
            raise ValueError(
                f"DISCORD_SHARD_IDS: with DISCORD_SHARD_COUNT={count} the shard ids are 0 to {count - 1}; "
                f"not one of them: {', '.join(beyond)}"
            )
        if len(set(ids)) != len(ids):
            raise ValueError("DISCORD_SHARD_IDS: each shard id once")
        return self

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None


@dataclass(frozen=True)
class Shards:
    """Which of the bot's gateway shards this process runs.

    Discord splits a bot's servers into shards by id, `(guild_id >> 22) % count`, and sends DMs on
    shard 0 alone. `count` None is one shard on discord.py's plain client; a count (or `auto`, the
    number Discord recommends) runs discord.py's `AutoShardedClient`, on the shards in `ids` (all of
    them when empty), so that several processes can share the bot's servers.
    """

    count: ShardCount | None = None
    ids: tuple[int, ...] = ()

    @classmethod
    def from_settings(cls, settings: DiscordSettings) -> Shards:
        return cls(settings.shard_count, tuple(settings.shard_ids))

    @property
    def gets_dms(self) -> bool:
        """True when this process runs shard 0, the one Discord sends every DM on."""
        return self.count is None or not self.ids or 0 in self.ids

    def client(self, intents: discord.Intents) -> discord.Client:
        """The discord.py client for these shards: the same events and the same handlers either way."""
        if self.count is None:
            return discord.Client(intents=intents, allowed_mentions=NO_PINGS)
        if self.count == "auto":  # no count: discord.py asks Discord (GET /gateway/bot) and runs every shard
            return discord.AutoShardedClient(intents=intents, allowed_mentions=NO_PINGS)
        ids = list(self.ids or range(self.count))
        return discord.AutoShardedClient(intents=intents, allowed_mentions=NO_PINGS, shard_count=self.count, shard_ids=ids)


def build(settings: DiscordSettings, service: Service, *, state_dir: Path) -> DiscordAdapter:
    """The adapter for these settings; it keeps the hash of its slash commands in `state_dir`."""
    assert settings.bot_token is not None, "only an enabled platform is built"
    use_discord_at(settings.api_url, settings.gateway_url)
    return DiscordAdapter(
        service,
        token=settings.bot_token.get_secret_value(),
        access=DiscordAccess.from_settings(settings),
        image_limits=service.config.image_limits,
        state_dir=state_dir,
        store=service.store,
        message_content=settings.message_content,
        shards=Shards.from_settings(settings),
    )


def use_discord_at(api_url: str, gateway_url: str) -> None:
    """Point discord.py at another REST base (version included) and gateway: a proxy, or a stand-in.

    discord.py offers no argument for either: every request is built on the class attribute
    `Route.BASE`, and the gateway is `DiscordWebSocket.DEFAULT_GATEWAY` (only the auto-sharded
    client given no shard count asks Discord for it). So they are set here, once, and hold for the
    whole process.
    """
    Route.BASE = api_url.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


@dataclass(frozen=True)
class DiscordAccess:
    """Who may use the bot, and where. Empty allow-lists mean everyone; a block always wins.

    Roles exist only in servers: in a DM, an allow-list of roles admits just the users on the
    allow-list of users, and blocked roles cannot be seen (set `allow_dms=False` if that matters).
    Channel lists apply to server channels (a thread counts as its parent channel too), not DMs.
    """

    allowed_guilds: frozenset[int] = frozenset()
    blocked_guilds: frozenset[int] = frozenset()
    allowed_channels: frozenset[int] = frozenset()
    blocked_channels: frozenset[int] = frozenset()
    allowed_roles: frozenset[int] = frozenset()
    blocked_roles: frozenset[int] = frozenset()
    allowed_users: frozenset[int] = frozenset()
    blocked_users: frozenset[int] = frozenset()
    allow_dms: bool = True

    @classmethod
    def from_settings(cls, settings: DiscordSettings) -> DiscordAccess:
        return cls(
            allowed_guilds=frozenset(settings.allowed_guilds),
            blocked_guilds=frozenset(settings.blocked_guilds),
            allowed_channels=frozenset(settings.allowed_channels),
            blocked_channels=frozenset(settings.blocked_channels),
            allowed_roles=frozenset(settings.allowed_roles),
            blocked_roles=frozenset(settings.blocked_roles),
            allowed_users=frozenset(settings.allowed_users),
            blocked_users=frozenset(settings.blocked_users),
            allow_dms=settings.allow_dms,
        )

    def permits(
        self, *, user: int, roles: Collection[int] = (), guild: int | None = None, channels: Collection[int] = ()
    ) -> bool:
        """`guild` None means a DM; `channels` holds the channel and, for a thread, its parent."""
        roles, channels = frozenset(roles), frozenset(channels)
        if user in self.blocked_users or roles & self.blocked_roles:
            return False
        if guild is None:
            if not self.allow_dms:
                return False
        elif (
            guild in self.blocked_guilds
            or (self.allowed_guilds and guild not in self.allowed_guilds)
            or channels & self.blocked_channels
            or (self.allowed_channels and not channels & self.allowed_channels)
        ):
            return False
        if self.allowed_users or self.allowed_roles:
            return user in self.allowed_users or bool(roles & self.allowed_roles)
        return True


class DiscordAdapter:
    """The Discord bot: a discord.py client, its slash commands, and the handlers that feed the service."""

    name = "discord"

    def __init__(
        self,
        service: Service,
        *,
        token: str,
        access: DiscordAccess,
        image_limits: ImageLimits,
        store: Store,
        state_dir: Path | None = None,
        message_content: bool = True,
        shards: Shards = Shards(),
    ) -> None:
        self.service = service
        self.store = store  # messages already taken, so that a replayed event is not answered twice
        self.token = token
        self.access = access
        self.image_limits = image_limits
        self.state_dir = state_dir if state_dir is not None else Path(".")
        self.message_content = message_content
        self._noted_withheld_text = False  # the log says once why some messages come without text
        self.in_flight = InFlight()
        self.shards = shards
        self._logged_in = False  # an AutoShardedClient can be closed only once login has begun
        self._connection: asyncio.Task[None] | None = None  # the gateway session, from start() on
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False  # no voice: no warnings about it
        intents = discord.Intents.default()
        intents.message_content = message_content  # privileged: switched on in the Developer Portal
        self.client = shards.client(intents)
        self.client.event(self.on_ready)
        self.client.event(self.on_message)
        self.tree = command_tree(self.client)
        for command in slash_commands(self.answer_interaction, models=service.chat_models):
            self.tree.add_command(command)
        for menu in message_menus(self.answer_menu):
            self.tree.add_command(menu)

    def routes(self) -> list[web.RouteDef]:
        return []  # Discord comes over its gateway

    async def start(self) -> None:
        """Log in, register the slash commands if they changed, connect; return once Discord says READY.

        A wrong token, the Message Content intent off in the Developer Portal, or shard settings
        Discord refuses, raise `AdapterError` saying how to fix it.
        """
        if self.shards.count is not None and not self.shards.gets_dms:
            log.info("this process does not run Discord shard 0: DMs to the bot reach only the process that does")
        self._logged_in = True
        try:
            await self.client.login(self.token)
        except discord.LoginFailure:
            await self.client.close()
            raise AdapterError("Discord refused DISCORD_BOT_TOKEN: copy it again from the Developer Portal, Bot page") from None
        except aiohttp.ClientError as exc:
            await self.client.close()
            raise AdapterError(f"cannot reach Discord at DISCORD_API_URL ({type(exc).__name__})") from None
        await self.sync_commands()
        self._connection = asyncio.create_task(self._connect(), name="discord")
        ready = asyncio.create_task(self.client.wait_until_ready())
        try:
            await asyncio.wait({self._connection, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._connection.done():
            self._connection.result()  # raises why the gateway would not have the bot

    async def _connect(self) -> None:
        """The gateway session: reconnects and resumes by itself; ends with `stop()` or a refusal."""
        try:
            await self.client.connect()
        except discord.PrivilegedIntentsRequired:
            raise AdapterError(
                "Discord refused the Message Content intent: turn on 'Message Content Intent' under Bot > "
                "Privileged Gateway Intents at https://discord.com/developers/applications and restart, "
                "or set DISCORD_MESSAGE_CONTENT=false to run without it"
            ) from None
        except discord.ConnectionClosed as closed:
            if closed.code == SHARDING_REQUIRED:
                raise AdapterError(
                    "Discord wants this bot split into more shards (it is in too many servers for each one): "
                    "set DISCORD_SHARD_COUNT=auto, or a larger count, then restart"
                ) from None
            if closed.code == INVALID_SHARD:
                raise AdapterError(
                    "Discord refused the shard settings: every process of the bot needs the same DISCORD_SHARD_COUNT, "
                    "and DISCORD_SHARD_IDS below it"
                ) from None
            raise
        finally:
            await self.client.close()

    async def wait(self) -> None:
        """Return when the gateway session ends: after `stop()`, or refused for good (raising why)."""
        if self._connection is not None:
            await self._connection

    async def stop(self) -> None:
        """Disconnect once the answers being posted are out; those not out within a grace period are stopped.

        Call it after `Service.drain`, so that no API call is still running.
        """
        await self.in_flight.close()
        if self._logged_in:
            await self.client.close()
        if self._connection is not None:
            await asyncio.wait({self._connection})  # its outcome is for wait() to raise

    async def sync_commands(self) -> None:
        """Register the slash commands with Discord, but only when their definition changed.

        Registering is rate limited and takes a while to reach every client, so a hash of the
        definitions (and of the application they belong to) is kept in `state_dir` between runs.
        """
        definitions = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        material = json.dumps({"application": self.client.application_id, "commands": definitions}, sort_keys=True)
        digest = hashlib.sha256(material.encode()).hexdigest()
        path = self.state_dir / COMMANDS_HASH_FILE
        if path.is_file() and path.read_text().strip() == digest:
            return
        try:
            await self.tree.sync()
        except discord.HTTPException as exc:
            log.warning("could not register the slash commands (%s); mentions and DMs still work", exc)
            return
        log.info("registered %d slash commands with Discord", len(definitions))
        try:
            path.write_text(digest + "\n")
        except OSError as exc:
            log.warning("could not save %s (%s): the slash commands will be registered again at the next start", path, exc)

    async def on_ready(self) -> None:
        log.info("connected to Discord as %s, in %d servers%s", self.client.user, len(self.client.guilds), self._shard_note())
        if not self.client.guilds and self.client.application_id and self.shards.count is None:  # a shard may have none
            invite = discord.utils.oauth_url(
                self.client.application_id, permissions=PERMISSIONS, scopes=("bot", "applications.commands")
            )
            log.info("the bot is in no server yet; invite it with %s", invite)

    def _shard_note(self) -> str:
        """The shards this process runs, for the log line that says it is connected (nothing for one shard)."""
        if not isinstance(self.client, discord.AutoShardedClient):
            return ""
        ids = ", ".join(str(shard_id) for shard_id in sorted(self.client.shards))
        return f", running shard{'s' if len(self.client.shards) > 1 else ''} {ids} of {self.client.shard_count}"

    # --- messages ------------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        """Answer a DM, an @mention or a reply to the bot; ignore bots (itself too) and whoever is not allowed."""
        if message.author.bot or message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        guild = message.guild.id if message.guild else None
        if not self._permits(message.author, guild, message.channel.id, message.channel):
            return
        me = self.client.user
        assert me is not None  # set at login
        parent = await self._parent(message)
        mentioned = any(user.id == me.id for user in message.mentions)
        if not (guild is None or mentioned or (parent is not None and parent.author.id == me.id)):
            return
        if not await first_delivery(self.store, f"discord:{message.id}"):  # replayed after a resume
            return
        if self._text_withheld(message):  # a reply to the bot that does not mention it, without the intent
            with contextlib.suppress(discord.HTTPException):
                await message.reply(MENTION_NEEDED, mention_author=False, allowed_mentions=NO_PINGS)
            return

        async def send(piece: Sendable, previous: discord.Message | None) -> discord.Message:
            # Each piece replies to the one before, so a reply to the last piece continues the chain.
            reference = (previous or message).to_reference(fail_if_not_exists=False)  # asker may delete theirs
            return await message.channel.send(**_carrying(piece), reference=reference, allowed_mentions=NO_PINGS)

        async with self.in_flight.track():
            answer = Answer(
                _Messages(send, typing_in=message.channel), f"in channel {message.channel.id}", interval=EDIT_INTERVAL
            )
            reply = await answer.reply(lambda progress: self._ask(message, parent, progress))
            await answer.finish(reply)

    async def _ask(self, message: discord.Message, parent: discord.Message | None, progress: Progress) -> Reply:
        """The reply to a message: its text without the mention, its images and the reply chain above it."""
        vetted = self._attachments(message.attachments)
        if (refusal := refused(vetted)) is not None:  # without its images the question is moot
            return refusal
        request = Request(
            user=f"discord:{message.author.id}",
            text=self._without_mention(message.content),
            history=await self._history(parent),
            request_id=f"discord:{message.id}",
            images=vetted.images,
            channel=_channel(message.channel.id, message.channel),
            display_name=message.author.display_name,
            documents=vetted.documents,
        )
        return with_notes(await self.service.handle(request, progress), [*vetted.notes, *vetted.refusals])

    async def _parent(self, message: discord.Message) -> discord.Message | None:
        """The message this one replies to: from the event or the client's cache, fetched only when neither has it."""
        reference = message.reference
        if message.type is not discord.MessageType.reply or reference is None or reference.message_id is None:
            return None
        if reference.cached_message is not None:
            return reference.cached_message
        if isinstance(reference.resolved, discord.Message):
            return reference.resolved
        if isinstance(reference.resolved, discord.DeletedReferencedMessage):
            return None
        try:
            return await message.channel.fetch_message(reference.message_id)
        except discord.HTTPException:  # deleted, or out of reach: the conversation starts after it
            return None

    async def _history(self, parent: discord.Message | None) -> list[Message]:
        """The reply chain above a message, oldest first: its own conversation and nobody else's."""
        me = self.client.user
        turns: list[Message] = []
        message = parent
        for _ in range(HISTORY_MESSAGES):
            if message is None:
                break
            if me is not None and message.author.id == me.id:
                turns.append({"role": "assistant", "content": _without_footer(message.content)})
            elif not self._text_withheld(message):  # left out: merge_turns drops empty turns
                turns.append({"role": "user", "content": self._without_mention(message.content)})
            message = await self._parent(message)
        return merge_turns(reversed(turns))

    def _without_mention(self, text: str) -> str:
        me = self.client.user
        return re.sub(rf"<@!?{me.id}>", "", text).strip() if me else text.strip()

    def _text_withheld(self, message: discord.Message) -> bool:
        """True for a message Discord sent without its text and files: without the Message Content intent,
        one in a server that does not mention the bot. The first is noted in the log, once."""
        if self.message_content or message.content or message.attachments or message.embeds:
            return False
        if not self._noted_withheld_text:
            self._noted_withheld_text = True
            log.info(
                "DISCORD_MESSAGE_CONTENT is false: Discord sends no text for server messages that do not mention the "
                "bot, so they are left out of reply chains, and a reply to the bot needs a mention to be answered"
            )
        return True

    # --- slash commands ------------------------------------------------------------------------

    async def answer_interaction(
        self, interaction: discord.Interaction, command: Command, attachments: Sequence[discord.Attachment] = ()
    ) -> None:
        """A slash command: deferred at once (Discord waits 3 seconds at most), answered with follow-ups."""
        if not self._permits(interaction.user, interaction.guild_id, interaction.channel_id, interaction.channel):
            await interaction.response.send_message("You are not allowed to use iobot here.", ephemeral=True)
            return
        async with self.in_flight.track():
            private = command.name in INFORMATIONAL
            await interaction.response.defer(thinking=True, ephemeral=private)
            answer = _followups(interaction, ephemeral=private)
            vetted = self._attachments(attachments)
            if attachments and not vetted.images and not vetted.documents:  # a file was the point of the command
                reply = Reply("\n".join([*vetted.refusals, *vetted.notes]), outcome=Outcome.REFUSED)
            else:
                request = Request(
                    user=f"discord:{interaction.user.id}",
                    text=command.text,
                    command=command,
                    request_id=f"discord:{interaction.id}",
                    images=vetted.images,
                    channel=_channel(interaction.channel_id, interaction.channel),
                    display_name=interaction.user.display_name,
                    documents=vetted.documents,
                )
                reply = await answer.reply(lambda progress: self.service.handle(request, progress))
                reply = with_notes(reply, [*vetted.notes, *vetted.refusals])
            if reply.private and not private and not answer.posted and reply.outcome != Outcome.DUPLICATE:
                # The "thinking" message is public and cannot turn ephemeral: replace it.
                await interaction.delete_original_response()
                answer = _followups(interaction, ephemeral=True)
            await answer.finish(reply)

    # --- message context menus -------------------------------------------------------------------

    async def answer_menu(self, interaction: discord.Interaction, menu: str, message: discord.Message) -> None:
        """A context menu used on a message: its command run on the message's text, answered as a slash
        command is, and charged to the person who used the menu. Discord sends the message's text with
        the interaction, Message Content intent or not."""
        name = MESSAGE_MENUS[menu]
        mine = self.client.user is not None and message.author.id == self.client.user.id
        text = _without_footer(message.content) if mine else self._without_mention(message.content)
        images = [a for a in message.attachments if (a.content_type or "").startswith("image/")] if name == "ask" else []
        if not text and not images:
            await interaction.response.send_message(NOTHING_TO_READ[name], ephemeral=True, allowed_mentions=NO_PINGS)
            return
        await self.answer_interaction(interaction, menu_command(name, text, self.service.config.default_language), images)

    # --- shared --------------------------------------------------------------------------------

    def _permits(self, user: discord.User | discord.Member, guild: int | None, channel_id: int | None, channel: object) -> bool:
        roles = [role.id for role in getattr(user, "roles", ())]  # a Member in a server, a User in a DM
        parent_id: int | None = getattr(channel, "parent_id", None)  # a thread counts as its parent too
        channels = {id_ for id_ in (channel_id, parent_id) if id_ is not None}
        return self.access.permits(user=user.id, roles=roles, guild=guild, channels=channels)

    def _attachments(self, attachments: Sequence[discord.Attachment]) -> Vetted:
        """A message's files sorted from what Discord says of each (see core/attachments.py); its CDN
        links need no credential."""
        described = [AttachedFile(a.filename, a.content_type or "", a.size, a.url) for a in attachments]
        return vet_attachments(described, self.image_limits, platform="Discord")


def _channel(channel_id: int | None, channel: object) -> str | None:
    """`discord:<channel>` as the store keeps a channel's settings; a thread shares its parent channel's."""
    parent_id: int | None = getattr(channel, "parent_id", None)
    found = parent_id or channel_id
    return None if found is None else f"discord:{found}"


Sendable = str | discord.File  # what one message of an answer carries: text, or a file


class _Messages:
    """An answer as Discord messages (the `Port`): posted by `send`, given the previous piece's message if any.

    `typing_in` is the channel that shows the typing indicator while the answer is worked out; None
    for an interaction, whose deferred reply shows Discord's own "thinking".
    """

    name = "Discord"

    def __init__(
        self,
        send: Callable[[Sendable, discord.Message | None], Awaitable[discord.Message]],
        *,
        typing_in: discord.abc.Messageable | None = None,
    ) -> None:
        self._send = send
        self._typing_in = typing_in

    def render(self, reply: Reply) -> list[str]:
        return message_pieces(render(reply))

    def render_text(self, text: str) -> list[str]:
        return message_pieces(text)

    def noted(self, piece: str, note: str) -> str:
        return with_subtext(piece, note)

    async def post(self, piece: str, after: discord.Message | None) -> discord.Message:
        with _delivering():
            return await self._send(piece, after)

    async def edit(self, handle: discord.Message, piece: str) -> None:
        with _delivering():
            await handle.edit(content=piece, allowed_mentions=NO_PINGS)

    async def delete(self, handle: discord.Message) -> None:
        with _delivering():
            await handle.delete()

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        if self._typing_in is None:
            yield
            return
        async with self._typing_in.typing():  # discord.py renews it every few seconds until the block ends
            yield

    async def upload(self, attachment: Attachment, after: discord.Message | None) -> discord.Message:
        with _delivering():
            return await self._send(discord.File(io.BytesIO(attachment.data), filename=attachment.name), after)


def _carrying(piece: Sendable) -> dict[str, Any]:
    """`send`'s arguments for one message: its text, or its file."""
    return {"file": piece} if isinstance(piece, discord.File) else {"content": piece}


@contextlib.contextmanager
def _delivering() -> Iterator[None]:
    """Turn a call Discord refused, or that never reached it, into the `DeliveryFailed` the delivery layer handles."""
    try:
        yield
    except discord.HTTPException as error:
        raise DeliveryFailed(f"HTTP {error.status}") from error
    except TimeoutError as error:
        raise DeliveryFailed("no answer in time") from error
    except aiohttp.ClientError as error:
        raise DeliveryFailed("the connection failed") from error


def message_pieces(text: str) -> list[str]:
    """`text` as Discord messages: each within the limit, code blocks intact, every link's target in view.

    Links are revealed before the split and again in each piece, since a cut through a code span
    turns the rest of it back into markdown, where a link would hide its target again. A piece that
    grew past the limit is split anew; each growth takes a link away, so this ends.
    """
    pieces = []
    for piece in split_message(reveal_links(text), MESSAGE_LIMIT):
        revealed = reveal_links(piece)
        pieces += [revealed] if len(revealed) <= MESSAGE_LIMIT else message_pieces(revealed)
    return pieces


def with_subtext(piece: str, note: str) -> str:
    """A message with `note` as its last line of subtext, within the limit: the text above its
    subtext lines is cut (code blocks closed) when all of it would not fit."""
    lines = piece.split("\n")
    kept = len(lines)
    while kept and lines[kept - 1].startswith("-# "):
        kept -= 1
    footer = "".join(f"\n{line}" for line in [*lines[kept:], f"-# {note[:NOTE_CHARS]}"])
    room = max(MESSAGE_LIMIT - len(footer), MIN_PIECE)
    return (split_message("\n".join(lines[:kept]), room) or [""])[0] + footer


def _followups(interaction: discord.Interaction, *, ephemeral: bool) -> Answer[str, discord.Message]:
    async def send(piece: Sendable, _previous: discord.Message | None) -> discord.Message:
        return await interaction.followup.send(**_carrying(piece), ephemeral=ephemeral, allowed_mentions=NO_PINGS, wait=True)

    return Answer(_Messages(send), f"in interaction {interaction.id}", interval=EDIT_INTERVAL)


def render(reply: Reply) -> str:
    """The reply as Discord markdown: its text, then its notes and the answering model as small grey lines."""
    text = reply.text
    if sum(1 for line in text.split("\n") if FENCE.match(line)) % 2:
        text += "\n```"  # an answer cut off inside a code block: close it before the footer
    footer = list(reply.notes)
    if reply.model:
        footer.append(model_line(reply.model, reply.usage))
    return "\n".join([text, *(f"-# {line}" for line in footer)])


def _without_footer(text: str) -> str:
    lines = text.split("\n")
    while lines and lines[-1].startswith("-# "):
        lines.pop()
    return "\n".join(lines).strip()


# --- application commands: the grammar as slash commands, and the message context menus ----------


def command_tree(client: discord.Client) -> app_commands.CommandTree:
    """A tree whose every command is global and says so: installable to servers and to people
    (`integration_types` [0, 1]) and usable in servers, the bot's DMs and other DMs (`contexts` [0, 1, 2])."""
    return app_commands.CommandTree(
        client,
        allowed_installs=app_commands.AppInstallationType(guild=True, user=True),
        allowed_contexts=app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True),
    )


AnswerCommand = Callable[..., Awaitable[None]]  # DiscordAdapter.answer_interaction
AUTOCOMPLETE_CHOICES = 25  # the most choices Discord shows while a person types an option

# The Python type a slash command option of each kind is declared with, from which discord.py makes its type.
OPTION_TYPES: dict[OptionKind, type] = {
    OptionKind.TEXT: str,
    OptionKind.LANGUAGE: str,
    OptionKind.LABELS: str,
    OptionKind.URL: str,
    OptionKind.COMMAND: str,
    OptionKind.MODEL: str,
    OptionKind.ATTACHMENT: discord.Attachment,
}


def slash_commands(answer: AnswerCommand, models: Sequence[str] = ()) -> list[app_commands.Command]:
    """Every command of the grammar as a slash command with typed options, handing a `Command` to `answer`.

    `models` are the chat models a person may pick, offered as they type a model option.
    """
    return [slash_command(spec, answer, models) for spec in COMMANDS.values()]


def slash_command(spec: CommandSpec, answer: AnswerCommand, models: Sequence[str] = ()) -> app_commands.Command:
    """A command's record as a slash command: its options as typed parameters, read into a `Command` by the record.

    discord.py reads a command's options from its callback's signature; the signature is built from
    the record (`__signature__`, which `inspect.signature` honours), with descriptions, choices and
    autocompletion from discord.py's own decorators.
    """
    attachments = [option.name for option in spec.options if option.kind is OptionKind.ATTACHMENT]

    async def callback(interaction: discord.Interaction, **values: Any) -> None:
        files = [values[name] for name in attachments if values.get(name) is not None]
        try:
            command = spec.command({**values, **{name: values.get(name) is not None for name in attachments}})
        except UsageError as error:  # what is wrong with the options, as the grammar says it
            await interaction.response.send_message(str(error), ephemeral=True, allowed_mentions=NO_PINGS)
            return
        await answer(interaction, command, files)

    interaction = inspect.Parameter("interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=discord.Interaction)
    # A function takes any attribute, but mypy knows of none on a callable: this one is inspect.signature's.
    callback.__signature__ = inspect.Signature([interaction, *map(_parameter, spec.options)])  # type: ignore[attr-defined]
    app_commands.describe(**{option.name: option.description for option in spec.options})(callback)
    choices = [app_commands.Choice(name=name, value=name) for name in COMMANDS]
    app_commands.choices(**{option.name: choices for option in spec.options if option.kind is OptionKind.COMMAND})(callback)
    complete = model_completion([DEFAULT, *models])
    app_commands.autocomplete(**{option.name: complete for option in spec.options if option.kind is OptionKind.MODEL})(callback)
    return app_commands.Command(name=spec.name, description=spec.description, callback=callback)


def model_completion(
    names: Sequence[str],
) -> Callable[[discord.Interaction, str], Coroutine[Any, Any, list[app_commands.Choice[str]]]]:
    """Discord's autocompletion of a model option: the names that contain what the person typed so far."""

    async def complete(interaction: discord.Interaction, typed: str) -> list[app_commands.Choice[str]]:
        found = [name for name in names if typed.casefold() in name.casefold()]
        return [app_commands.Choice(name=name, value=name) for name in found[:AUTOCOMPLETE_CHOICES]]

    return complete


# The context menus on a message (right-click it, Apps), as Discord shows them, and the command each runs on its text.
MESSAGE_MENUS = {"Summarize": "summarize", "Translate": "translate", "Ask iobot": "ask"}
NOTHING_TO_READ = {
    "summarize": "That message has no text to summarize.",
    "translate": "That message has no text to translate.",
    "ask": "That message has no text or image to answer.",
}
AnswerMenu = Callable[[discord.Interaction, str, discord.Message], Awaitable[None]]  # DiscordAdapter.answer_menu


def message_menus(answer: AnswerMenu) -> list[app_commands.ContextMenu]:
    """A context menu on messages for each of `MESSAGE_MENUS`, handing its name and the message to `answer`."""

    def menu(name: str) -> app_commands.ContextMenu:
        async def callback(interaction: discord.Interaction, message: discord.Message) -> None:
            await answer(interaction, name, message)

        return app_commands.ContextMenu(name=name, callback=callback)

    return [menu(name) for name in MESSAGE_MENUS]


def menu_command(name: str, text: str, language: str) -> Command:
    """The command a menu runs on a message's text: a summary, a translation into `language`, or an answer."""
    values = {"summarize": {"text": text}, "translate": {"language": language, "text": text}, "ask": {"question": text}}
    return COMMANDS[name].command(values[name])


def _parameter(option: Option) -> inspect.Parameter:
    """An option as the keyword parameter discord.py reads: its type, and a default when it is optional."""
    kind: Any = OPTION_TYPES.get(option.kind)
    if option.kind is OptionKind.NUMBER:
        kind = app_commands.Range[int, option.low, option.high]
    annotation = kind if option.required or option.default is not None else kind | None
    default = inspect.Parameter.empty if option.required else option.default
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
