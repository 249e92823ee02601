"""A stand-in Discord on 127.0.0.1: the REST API, the gateway WebSocket and the attachment CDN.

Just enough of Discord for the unmodified discord.py client to log in, connect, receive events and
answer them. The world is two servers the bot is in (the first with two text channels, one with a
thread; the second with one channel), a DM channel, two people, another bot and the bot, plus a
channel of a third server the bot is not in and a group DM without the bot (where only a user
install reaches it, through interactions; Discord refuses the bot's REST calls there). Every REST
call is recorded in `calls`; every message (posted by a test or by the bot) is kept in `messages`
with its current content. Like Discord, it sends the bot's own messages and edits back over the
gateway, keeps events for a disconnected bot until it resumes, and, when the bot connected without
the Message Content intent, blanks the text and files of server messages that do not mention it (in
events and REST answers; not in a context menu's target message).

Like Discord, it shards: the world is split into `shard_count` shards, each a gateway session of its
own that IDENTIFYs with `"shard": [id, count]`; a server's events go to shard
`(guild_id >> 22) % count` and DMs to shard 0. `GET /gateway/bot` recommends `shard_count`. A
session with another count is refused: 4011 (sharding required) when it has fewer, 4010 (invalid
shard) otherwise. With one shard, a client that sends no `shard` (discord.py's plain client) has it.

A message the bot sends with files comes as discord.py sends it, as multipart/form-data (the JSON in
`payload_json`, the files in `files[0]`, ...); the files go on the stand-in CDN, listed in the
message's `attachments` as Discord lists them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import mimetypes
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import BodyPartReader, WSMsgType, web

API_PREFIX = "/api/v10"
TOKEN = "stand-in-bot-token"
BOT_ID = APPLICATION_ID = 1000  # a bot's user id is its application's id
GUILD_ID = 2000  # on shard 0 whatever the count: 2000 >> 22 is 0
SECOND_GUILD = 1 << 22  # on shard 1 of 2
GENERAL, RANDOM, DM_CHANNEL = 3000, 3001, 3100
THREAD = 3002  # a thread in RANDOM
SECOND_GENERAL = 3200  # the second server's channel
GROUP_DM = 3300  # a group DM of alice and bob, without the bot
FOREIGN_GUILD, FOREIGN_CHANNEL = 2001, 3400  # a server the bot is not in, and a channel of it
MEMBER_ROLE, SECOND_MEMBER_ROLE = 4000, 4001  # everyone's role in each server the bot is in
ALICE, BOB, OTHER_BOT = 5001, 5002, 5003
MESSAGE_CONTENT_INTENT = 1 << 15
EPHEMERAL = 64
INVALID_SHARD, SHARDING_REQUIRED = 4010, 4011  # gateway close codes
TIMESTAMP = "2025-01-01T00:00:00.000000+00:00"

NAMES = {BOT_ID: "iobot", ALICE: "alice", BOB: "bob", OTHER_BOT: "otherbot"}
GUILDS = {GUILD_ID: ("Stand-in server", MEMBER_ROLE), SECOND_GUILD: ("Second server", SECOND_MEMBER_ROLE)}
CHANNELS = {GENERAL: (GUILD_ID, "general"), RANDOM: (GUILD_ID, "random"), SECOND_GENERAL: (SECOND_GUILD, "general")}
THREADS = {THREAD: RANDOM}  # thread -> its parent channel
REACHABLE = {*CHANNELS, *THREADS, DM_CHANNEL}  # the channels the bot may read and post in
# A REST request's JSON payload and files, read once as it is recorded and kept on it for its handler.
BODY: web.RequestKey[Any] = web.RequestKey("body", object)
FILES: web.RequestKey[list[tuple[str, bytes]]] = web.RequestKey("files", list)
T = TypeVar("T")


@dataclass
class Call:
    """One REST request as the stand-in saw it; `path` is below the API base, e.g. `/channels/3000/messages`."""

    method: str
    path: str
    query: dict[str, str]
    body: Any  # the JSON payload (of a multipart request too), else the raw bytes
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, bytes) of a multipart request


def guild_of(channel: int) -> int | None:
    """The server a channel or thread is in (the foreign channel's too); None for the DM and the group DM."""
    if channel == FOREIGN_CHANNEL:
        return FOREIGN_GUILD
    parent = THREADS.get(channel, channel)
    return CHANNELS[parent][0] if parent in CHANNELS else None


def roles_in(guild: int) -> list[int]:
    """Everyone's roles in a server: its member role where the bot is in it, none in the foreign one."""
    return [GUILDS[guild][1]] if guild in GUILDS else []


def shard_of(guild: int | None, shard_count: int) -> int:
    """The shard Discord sends a server's events on; DMs go to shard 0."""
    return 0 if guild is None else (guild >> 22) % shard_count


def user(user_id: int) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": NAMES[user_id],
        "global_name": NAMES[user_id],
        "discriminator": "0",
        "avatar": None,
        "bot": user_id in (BOT_ID, OTHER_BOT),
    }


def member(user_id: int, roles: Sequence[int] = ()) -> dict[str, Any]:
    return {
        "user": user(user_id),
        "roles": [str(role) for role in roles],
        "joined_at": TIMESTAMP,
        "deaf": False,
        "mute": False,
        "flags": 0,
    }


def text_channel(channel_id: int, name: str) -> dict[str, Any]:
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_of(channel_id)),
        "name": name,
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
    }


def thread(thread_id: int, parent: int) -> dict[str, Any]:
    return {
        "id": str(thread_id),
        "type": 11,
        "guild_id": str(guild_of(parent)),
        "parent_id": str(parent),
        "name": "a thread",
        "owner_id": str(ALICE),
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "message_count": 0,
        "member_count": 1,
        "flags": 0,
        "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "archive_timestamp": TIMESTAMP, "locked": False},
    }


def role(role_id: int, name: str) -> dict[str, Any]:
    return {
        "id": str(role_id),
        "name": name,
        "permissions": "1071698660929",
        "position": 0 if role_id in GUILDS else 1,
        "color": 0,
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


@dataclass
class Session:
    """One shard's gateway session: opened by an IDENTIFY, kept across drops so that a RESUME continues it."""

    shard: int
    session_id: str
    socket: web.WebSocketResponse
    sequence: int = 0
    live: bool = False  # READY and its servers sent, and the connection up: events flow


class DiscordStandIn:
    def __init__(self, *, refuse_message_content: bool = False, shard_count: int = 1) -> None:
        self.refuse_message_content = refuse_message_content  # close with 4014, as Discord does
        self.shard_count = shard_count
        self.calls: list[Call] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.identifies: list[dict[str, Any]] = []  # IDENTIFY payloads received
        self.message_content = True  # whether the bot's session has the Message Content intent
        self.resumes: list[dict[str, Any]] = []  # RESUME payloads received
        self.downloads: list[tuple[str, str | None]] = []  # (path, Authorization header) of attachment downloads
        self.ready = asyncio.Event()  # set while every shard has a live session (after GUILD_CREATE or RESUMED)
        self.sessions: dict[int, Session] = {}  # each shard's latest session
        self.sent: list[tuple[int, str, dict[str, Any]]] = []  # (shard, event, data) of every gateway event sent
        self._ids = itertools.count(10_000)
        self._files: dict[str, tuple[bytes, str]] = {}
        self._interaction_channels: dict[str, int] = {}  # interaction token -> channel, for follow-ups
        self._sockets: set[web.WebSocketResponse] = set()
        self._pending: defaultdict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)  # by shard
        self._runner: web.AppRunner | None = None
        self.base = ""

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> DiscordStandIn:
        app = web.Application(middlewares=[self._record])
        api = API_PREFIX
        app.router.add_get(api + "/users/@me", self._me)
        app.router.add_get(api + "/oauth2/applications/@me", self._application)
        app.router.add_put(api + "/applications/{app}/commands", self._put_commands)
        app.router.add_get(api + "/gateway/bot", self._gateway_bot)
        app.router.add_post(api + "/channels/{channel}/typing", self._typing)
        app.router.add_post(api + "/channels/{channel}/messages", self._create_message)
        app.router.add_get(api + "/channels/{channel}/messages/{message}", self._get_message)
        app.router.add_patch(api + "/channels/{channel}/messages/{message}", self._edit_message)
        app.router.add_delete(api + "/channels/{channel}/messages/{message}", self._delete_message)
        app.router.add_post(api + "/interactions/{id}/{token}/callback", self._interaction_callback)
        app.router.add_post(api + "/webhooks/{app}/{token}", self._create_followup)
        app.router.add_patch(api + "/webhooks/{app}/{token}/messages/{message}", self._edit_message)
        app.router.add_delete(api + "/webhooks/{app}/{token}/messages/{message}", self._delete_message)
        app.router.add_route("*", api + "/{rest:.*}", self._not_found)
        app.router.add_get("/attachments/{id}/{name}", self._attachment)
        app.router.add_get("/gateway", self._gateway)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for socket in list(self._sockets):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://{self.base}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.base}/gateway"

    # --- what tests do -----------------------------------------------------------------------------

    async def post(
        self,
        content: str,
        *,
        author: int = ALICE,
        channel: int = GENERAL,
        reply_to: int | None = None,
        mention_bot: bool = False,
        attachments: Sequence[dict[str, Any]] = (),
        deliver: bool = True,
    ) -> dict[str, Any]:
        """A person's message; `deliver=False` only stores it, as if sent before the bot was connected."""
        mentions = [user(BOT_ID)] if mention_bot else []
        message = self._new_message(
            content, author=author, channel=channel, reply_to=reply_to, mentions=mentions, attachments=list(attachments)
        )
        if deliver:
            await self.dispatch("MESSAGE_CREATE", message)
        return message

    def attachment(self, name: str, data: bytes, content_type: str, *, size: int | None = None) -> dict[str, Any]:
        """A file on the stand-in CDN; `size` is what Discord declares (defaults to the real size)."""
        attachment_id = str(next(self._ids))
        self._files[f"{attachment_id}/{name}"] = (data, content_type)
        url = f"http://{self.base}/attachments/{attachment_id}/{name}"
        return {
            "id": attachment_id,
            "filename": name,
            "size": len(data) if size is None else size,
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }

    async def invoke(
        self,
        name: str,
        options: Sequence[dict[str, Any]] = (),
        *,
        author: int = ALICE,
        channel: int = GENERAL,
        resolved: dict[str, Any] | None = None,
        user_install: bool = False,
        kind: int = 2,
    ) -> dict[str, Any]:
        """A slash command used by `author`: an INTERACTION_CREATE (`user_install`: see `invoke_menu`; `kind` 4:
        an option being typed, to complete)."""
        data: dict[str, Any] = {"id": "900", "name": name, "type": 1, "options": list(options)}
        if resolved:
            data["resolved"] = resolved
        return await self._interact(data, author=author, channel=channel, user_install=user_install, kind=kind)

    async def invoke_menu(
        self, name: str, target: dict[str, Any], *, author: int = ALICE, user_install: bool = False
    ) -> dict[str, Any]:
        """A message context menu used by `author` on the message `target`, in its channel.

        `user_install`: through the app installed to `author` (the only way in a server the bot is not in).
        Discord sends the target message whole, its text included, with or without the Message Content intent.
        """
        data = {"id": "950", "name": name, "type": 3, "target_id": target["id"], "resolved": {"messages": {target["id"]: target}}}
        return await self._interact(data, author=author, channel=int(target["channel_id"]), user_install=user_install)

    async def _interact(
        self, data: dict[str, Any], *, author: int, channel: int, user_install: bool, kind: int = 2
    ) -> dict[str, Any]:
        """An INTERACTION_CREATE of type `kind` (2: a command or menu used) with `data`, from `author` in
        `channel`, authorized by a server or a user install."""
        interaction_id = next(self._ids)
        token = f"interaction-token-{interaction_id}"
        guild = guild_of(channel)
        # Which installs authorized it: "0" the server's (its id; "0" in the bot's DM), "1" the person's.
        owners = {"1": str(author)} if user_install else {"0": str(guild or 0)}
        interaction = {
            "id": str(interaction_id),
            "application_id": str(APPLICATION_ID),
            "type": kind,
            "data": data,
            "token": token,
            "version": 1,
            "app_permissions": "1071698660929",
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": 25 * 1024 * 1024,
            "context": 0 if guild else 1 if channel == DM_CHANNEL else 2,  # a server, the bot's DM, another DM
            "authorizing_integration_owners": owners,
            "channel_id": str(channel),
        }
        self._interaction_channels[token] = channel
        if guild is not None:
            interaction.update(
                guild_id=str(guild),
                guild_locale="en-US",
                channel=text_channel(channel, "general"),
                member={**member(author, roles_in(guild)), "permissions": "1071698660929"},
            )
        elif channel == GROUP_DM:
            group = {"id": str(channel), "type": 3, "name": None, "icon": None, "owner_id": str(ALICE)}
            interaction.update(user=user(author), channel={**group, "recipients": [user(ALICE), user(BOB)]})
        else:
            interaction.update(user=user(author), channel={"id": str(channel), "type": 1})
        await self.dispatch("INTERACTION_CREATE", interaction)
        return interaction

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway event on its shard (its server's, shard 0 for a DM) now, or once that shard is
        back (Discord replays missed events on RESUME)."""
        guild = data.get("guild_id")
        shard = shard_of(int(guild) if guild else None, self.shard_count)
        self._pending[shard].append((event, data))
        await self._flush(shard)

    async def disconnect(self) -> None:
        """Drop every gateway connection as Discord does now and then (close code 4000: reconnect and resume)."""
        self.ready.clear()
        for session in self.sessions.values():
            session.live = False
            await session.socket.close(code=4000, message=b"stand-in: please reconnect")

    async def wait_for(self, condition: Callable[[], T | None], timeout: float = 10.0) -> T:
        """Poll until `condition()` is truthy, and return it; fail after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not (result := condition()):
                await asyncio.sleep(0.02)
            return result

    # --- what tests read ---------------------------------------------------------------------------

    def calls_to(self, method: str, pattern: str) -> list[Call]:
        """REST calls with this method whose path matches the regular expression `pattern` entirely."""
        return [call for call in self.calls if call.method == method and re.fullmatch(pattern, call.path)]

    def bot_messages(self, channel: int = GENERAL) -> list[dict[str, Any]]:
        """The bot's messages in a channel (follow-ups included), oldest first, as they are now."""
        return [m for m in self.messages.values() if m["author"]["id"] == str(BOT_ID) and m["channel_id"] == str(channel)]

    def attachment_bytes(self, attachment: dict[str, Any]) -> bytes:
        """The bytes of a file a message carries, as the CDN serves them."""
        return self._files[f"{attachment['id']}/{attachment['filename']}"][0]

    def shards_sent(self, event: str, message: dict[str, Any]) -> list[int]:
        """The shards a gateway event about `message` (by id) was sent on, in order."""
        return [shard for shard, name, data in self.sent if name == event and data.get("id") == message["id"]]

    def replies_to(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if (m.get("message_reference") or {}).get("message_id") == message["id"]]

    # --- REST --------------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith(API_PREFIX):
            files: list[tuple[str, bytes]] = []
            if request.content_type == "multipart/form-data":
                body, files = await _read_multipart(request)
            else:
                raw = await request.read()
                body = json.loads(raw) if raw and request.content_type == "application/json" else raw or None
            request[BODY], request[FILES] = body, files
            self.calls.append(Call(request.method, request.path.removeprefix(API_PREFIX), dict(request.query), body, files))
            needs_token = not request.path.startswith((API_PREFIX + "/webhooks/", API_PREFIX + "/interactions/"))
            if needs_token and request.headers.get("Authorization") != f"Bot {TOKEN}":
                return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        return await handler(request)

    async def _me(self, _request: web.Request) -> web.Response:
        return _json({**user(BOT_ID), "verified": True, "mfa_enabled": False, "flags": 0})

    async def _application(self, _request: web.Request) -> web.Response:
        return _json(
            {
                "id": str(APPLICATION_ID),
                "name": "iobot",
                "icon": None,
                "description": "",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": user(ALICE),
                "team": None,
                "verify_key": "0" * 64,
                "flags": 0,
                "summary": "",
                "bot": user(BOT_ID),
            }
        )

    async def _put_commands(self, request: web.Request) -> web.Response:
        commands = await request.json()
        return _json(
            [
                {
                    **command,
                    "id": str(900 + index),
                    "application_id": str(APPLICATION_ID),
                    "version": "1",
                    "default_member_permissions": None,
                    "type": command.get("type", 1),
                    "description": command.get("description", ""),  # a context menu has none: Discord says ""
                }
                for index, command in enumerate(commands)
            ]
        )

    async def _gateway_bot(self, _request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": self.shard_count, "session_start_limit": limit})

    async def _typing(self, request: web.Request) -> web.Response:
        if int(request.match_info["channel"]) not in REACHABLE:
            return _missing_access()
        return web.Response(status=204)

    async def _create_message(self, request: web.Request) -> web.Response:
        if int(request.match_info["channel"]) not in REACHABLE:
            return _missing_access()
        body = request[BODY]
        reference = body.get("message_reference") or {}
        reply_to: int | None = int(reference.get("message_id", 0))
        if reply_to not in self.messages:  # deleted meanwhile: with fail_if_not_exists off, a plain message
            reply_to = None
        message = self._new_message(
            body.get("content") or "",
            author=BOT_ID,
            channel=int(request.match_info["channel"]),
            reply_to=reply_to,
            attachments=self._uploaded(request[FILES]),
        )
        await self.dispatch("MESSAGE_CREATE", message)
        return _json(message)

    async def _get_message(self, request: web.Request) -> web.Response:
        if int(request.match_info["channel"]) not in REACHABLE:
            return _missing_access()
        message = self.messages.get(int(request.match_info["message"]))
        if message is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        return _json(self._as_the_bot_sees(message))

    async def _edit_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(int(request.match_info["message"]))
        if message is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        body = await request.json()
        message.update(content=body.get("content", message["content"]), edited_timestamp=TIMESTAMP)
        if not message["flags"] & EPHEMERAL:
            await self.dispatch("MESSAGE_UPDATE", message)
        return _json(message)

    async def _delete_message(self, request: web.Request) -> web.Response:
        if request.match_info["message"] != "@original":
            message = self.messages.pop(int(request.match_info["message"]), None)
            if message is None:
                return _json({"message": "Unknown Message", "code": 10008}, status=404)
        return web.Response(status=204)

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        body = await request.json()
        flags = (body.get("data") or {}).get("flags", 0)
        resource: dict[str, Any] = {"type": body["type"]}
        if body["type"] == 4:  # an immediate message
            channel = self._interaction_channels[request.match_info["token"]]
            resource["message"] = self._new_message(body["data"].get("content", ""), author=BOT_ID, channel=channel, flags=flags)
        interaction = {
            "id": request.match_info["id"],
            "type": 2,
            "response_message_loading": body["type"] == 5,
            "response_message_ephemeral": bool(flags & EPHEMERAL),
        }
        return _json({"interaction": interaction, "resource": resource})

    async def _create_followup(self, request: web.Request) -> web.Response:
        body = request[BODY]
        flags = body.get("flags", 0)
        channel = self._interaction_channels[request.match_info["token"]]
        attachments = self._uploaded(request[FILES])
        message = self._new_message(
            body.get("content") or "", author=BOT_ID, channel=channel, flags=flags, attachments=attachments
        )
        message["webhook_id"] = str(APPLICATION_ID)
        if not flags & EPHEMERAL:
            await self.dispatch("MESSAGE_CREATE", message)
        return _json(message)

    def _uploaded(self, files: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """Files sent with a message, put on the CDN; Discord tells their type from the name, as here."""
        return [self.attachment(name, data, mimetypes.guess_type(name)[0] or "application/octet-stream") for name, data in files]

    async def _not_found(self, _request: web.Request) -> web.Response:
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    async def _attachment(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['id']}/{request.match_info['name']}"
        self.downloads.append((request.path, request.headers.get("Authorization")))
        if key not in self._files:
            return web.Response(status=404)
        data, content_type = self._files[key]
        return web.Response(body=data, headers={"Content-Type": content_type})  # as sent: "text/plain; charset=utf-8" too

    def _new_message(
        self,
        content: str,
        *,
        author: int,
        channel: int,
        reply_to: int | None = None,
        mentions: list[dict[str, Any]] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        flags: int = 0,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": str(next(self._ids)),
            "channel_id": str(channel),
            "author": user(author),
            "content": content,
            "timestamp": TIMESTAMP,
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions or [],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": flags,
        }
        guild = guild_of(channel)
        if guild is not None:
            message["guild_id"] = str(guild)
            message["member"] = {k: v for k, v in member(author, roles_in(guild)).items() if k != "user"}
        if reply_to is not None:
            parent = self.messages[reply_to]
            message["type"] = 19
            message["message_reference"] = {
                "type": 0,
                "message_id": parent["id"],
                "channel_id": parent["channel_id"],
                "guild_id": parent.get("guild_id"),
            }
            # Discord nests the replied-to message one level deep, without its own referenced message.
            message["referenced_message"] = {k: v for k, v in parent.items() if k != "referenced_message"}
        self.messages[int(message["id"])] = message
        return message

    # --- the gateway -------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.add(socket)
        session: Session | None = None  # the one this connection carries, once it IDENTIFYs or RESUMEs
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 41_250}})
        async for frame in socket:
            if frame.type is not WSMsgType.TEXT:
                continue
            payload = json.loads(frame.data)
            match payload["op"]:
                case 1:  # heartbeat
                    await socket.send_json({"op": 11})
                case 2:
                    session = await self._identify(socket, payload["d"])
                case 6:
                    session = await self._resume(socket, payload["d"])
        self._sockets.discard(socket)
        if session is not None and session.socket is socket:
            session.live = False
            self._update_ready()
        return socket

    async def _identify(self, socket: web.WebSocketResponse, identify: dict[str, Any]) -> Session | None:
        self.identifies.append(identify)
        self.message_content = bool(identify.get("intents", 0) & MESSAGE_CONTENT_INTENT)
        if self.refuse_message_content and identify.get("intents", 0) & MESSAGE_CONTENT_INTENT:
            await socket.close(code=4014, message=b"Disallowed intent(s).")
            return None
        shard, count = identify.get("shard", [0, 1])
        if count != self.shard_count or not 0 <= shard < count:
            too_few = count < self.shard_count
            await socket.close(
                code=SHARDING_REQUIRED if too_few else INVALID_SHARD,
                message=b"Sharding required." if too_few else b"Invalid shard.",
            )
            return None
        session = Session(shard, uuid.uuid4().hex, socket)
        self.sessions[shard] = session
        guilds = [guild for guild in GUILDS if shard_of(guild, count) == shard]
        ready = {
            "v": 10,
            "user": {**user(BOT_ID), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(guild), "unavailable": True} for guild in guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(APPLICATION_ID), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        if "shard" in identify:
            ready["shard"] = [shard, count]
        await self._send(session, "READY", ready)
        for guild in guilds:
            await self._send(session, "GUILD_CREATE", self._guild(guild))
        await self._go_live(session)
        return session

    async def _resume(self, socket: web.WebSocketResponse, resume: dict[str, Any]) -> Session | None:
        self.resumes.append(resume)
        session = next((s for s in self.sessions.values() if s.session_id == resume.get("session_id")), None)
        if session is None:
            await socket.send_json({"op": 9, "d": False})  # invalid session: identify afresh
            return None
        session.socket = socket
        await self._send(session, "RESUMED", {})
        await self._go_live(session)
        return session

    async def _go_live(self, session: Session) -> None:
        session.live = True
        self._update_ready()
        await self._flush(session.shard)

    def _update_ready(self) -> None:
        every_shard = set(self.sessions) == set(range(self.shard_count))
        if every_shard and all(session.live for session in self.sessions.values()):
            self.ready.set()
        else:
            self.ready.clear()

    async def _flush(self, shard: int) -> None:
        session = self.sessions.get(shard)
        while self._pending[shard] and session is not None and session.live and not session.socket.closed:
            event, data = self._pending[shard].pop(0)
            if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
                data = self._as_the_bot_sees(data)
            await self._send(session, event, data)

    def _as_the_bot_sees(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message as Discord shows it to the bot: without the Message Content intent, a server message
        by someone else that does not mention the bot comes with no text, files or embeds (the message it
        replies to, nested in it, likewise)."""
        if self.message_content:
            return message
        seen = dict(message)
        if seen.get("referenced_message"):
            seen["referenced_message"] = self._as_the_bot_sees(seen["referenced_message"])
        mentioned = any(mention["id"] == str(BOT_ID) for mention in message["mentions"])
        if "guild_id" in message and message["author"]["id"] != str(BOT_ID) and not mentioned:
            seen.update(content="", attachments=[], embeds=[])
        return seen

    async def _send(self, session: Session, event: str, data: dict[str, Any]) -> None:
        session.sequence += 1
        self.sent.append((session.shard, event, data))
        await session.socket.send_json({"op": 0, "t": event, "s": session.sequence, "d": data})

    def _guild(self, guild: int) -> dict[str, Any]:
        name, member_role = GUILDS[guild]
        return {
            "id": str(guild),
            "name": name,
            "icon": None,
            "owner_id": str(ALICE),
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [role(guild, "@everyone"), role(member_role, "member")],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_flags": 0,
            "premium_tier": 0,
            "nsfw_level": 0,
            "preferred_locale": "en-US",
            "member_count": 4,
            "large": False,
            "unavailable": False,
            "joined_at": TIMESTAMP,
            "channels": [text_channel(channel, name) for channel, (in_guild, name) in CHANNELS.items() if in_guild == guild],
            "threads": [thread(thread_id, parent) for thread_id, parent in THREADS.items() if guild_of(parent) == guild],
            "members": [member(BOT_ID)],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


async def _read_multipart(request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
    """A request with files, as discord.py sends one: the JSON in `payload_json`, the files in `files[n]`."""
    payload: Any = None
    files: list[tuple[str, bytes]] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader), "discord.py sends no nested multipart"
        if part.name == "payload_json":
            payload = json.loads(await part.text())
        elif (part.name or "").startswith("files["):
            files.append((part.filename or "", bytes(await part.read())))
    return payload, files


def _missing_access() -> web.Response:
    """Discord's answer to a bot acting in a channel it cannot see (a server it is not in)."""
    return _json({"message": "Missing Access", "code": 50001}, status=403)


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly application/json (no charset).
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})
