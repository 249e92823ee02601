"""Slack on 127.0.0.1, for tests and benchmarks: the Web API, the file host, `response_url`, Socket Mode.

It records every call (`calls`), keeps the messages the bot posts so that `conversations.replies`
returns them, and serves files the way Slack does: with the bot token in `Authorization` the file,
without it a sign-in page (HTML, status 200). A file the bot uploads takes Slack's three steps:
`files.getUploadURLExternal`, a POST of the bytes to the upload URL it gives (served here too), and
`files.completeUploadExternal`, which shares it as a message carrying the file. Requests to the app
under test are signed here with slack_sdk's own `SignatureVerifier`, as Slack signs them.

slack_sdk sends some methods as JSON, others as form data or query parameters: all are accepted.

Message shortcuts arrive as Slack posts interactions (`interaction_body`: a form whose `payload` field
is the JSON), with a `response_url` served here. `lock_out(channel)` makes a conversation one the bot
is not in: every method that names it answers `channel_not_found` (or `not_in_channel`), as Slack does
for a private channel or a DM between people, `chat.postEphemeral` included. `views.publish` keeps
each person's Home tab (`home_views`).

`fail(method, kind)` makes a Web API method, the file host ("download"), the upload URL ("upload")
or `response_url` ("response") misbehave as Slack and the proxies in front of it do: a JSON error,
a plain-text or HTML error page, no answer in time, or a dropped connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import mimetypes
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

TEAM_ID = "T0TEST"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
SIGN_IN_PAGE = "<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to your workspace</body></html>"
BAD_GATEWAY_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
FAULTS = ("json_error", "text_405", "html_502", "timeout", "drop")
FAULT_DELAY = 5.0  # seconds a "timeout" fault holds the request: past the clients' timeouts in tests


@dataclass
class Call:
    """One request the stand-in received: a Web API method, "download", "upload", "response" or "socket_ack"."""

    method: str
    args: dict[str, Any]
    token: str | None = None


@dataclass
class StoredFile:
    id: str
    name: str
    body: bytes
    mimetype: str
    html: bool = False  # always answer with the sign-in page, as Slack does without files:read
    redirect_to: str | None = None


@dataclass
class Upload:
    """A file the bot is uploading: announced by `files.getUploadURLExternal`, its bytes once posted."""

    id: str
    name: str
    length: int
    body: bytes | None = None


@dataclass
class Fault:
    """A misbehaviour of one method for its next `times` calls (None: every call), after `after` good ones."""

    method: str
    kind: str
    times: int | None = None
    after: int = 0


@dataclass
class SlackStandIn:
    bot_token: str
    app_token: str | None = None
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # channel -> messages
    files: dict[str, StoredFile] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    locked: dict[str, str] = field(default_factory=dict)  # channel -> the error every method naming it gets
    home_views: dict[str, dict[str, Any]] = field(default_factory=dict)  # user -> their published Home tab
    streaming: bool = False  # whether chat.startStream is allowed; refused (`not_allowed`) otherwise
    base_url: str = ""  # http://127.0.0.1:PORT, set by start()
    _clock: itertools.count = field(default_factory=lambda: itertools.count(1_700_000_000))
    _runner: web.AppRunner | None = None
    _sockets: list[web.WebSocketResponse] = field(default_factory=list)

    # --- lifecycle ---

    async def start(self) -> SlackStandIn:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/files/{id}/{name}", self._download)
        app.router.add_post("/response/{key}", self._response)
        app.router.add_post("/upload/{id}", self._upload)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)  # Slack takes bursts of connections
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        for socket in self._sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> SlackStandIn:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def api_url(self) -> str:
        return self.base_url + "/api/"

    # --- what tests set up ---

    def next_ts(self) -> str:
        return f"{next(self._clock)}.000100"

    def add_message(self, channel: str, user: str, text: str, *, thread_ts: str | None = None, **extra: Any) -> dict[str, Any]:
        """A message a person wrote, stored as Slack would; returns it (usable as an event's body)."""
        message = {"type": "message", "user": user, "text": text, "ts": self.next_ts(), **extra}
        if thread_ts:
            message["thread_ts"] = thread_ts
        self.messages.setdefault(channel, []).append(message)
        return message

    def add_file(
        self,
        name: str,
        body: bytes,
        mimetype: str = "image/png",
        *,
        html: bool = False,
        redirect_to: str | None = None,
        url: str | None = None,
    ) -> dict[str, Any]:
        """A file as an event lists it; `url` replaces its download link (e.g. with another host)."""
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self.files[file_id] = StoredFile(file_id, name, body, mimetype, html, redirect_to)
        link = url or f"{self.base_url}/files/{file_id}/{name}"
        return {
            "id": file_id,
            "name": name,
            "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1],
            "size": len(body),
            "url_private": link,
            "url_private_download": link,
        }

    def fail(self, method: str, kind: str, *, times: int | None = None, after: int = 0) -> None:
        """Make `method` ("chat.update", "download", "response", ...) misbehave; `kind` is one of FAULTS."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}")
        self.faults.append(Fault(method, kind, times, after))

    def lock_out(self, channel: str, error: str = "channel_not_found") -> None:
        """Make `channel` one the bot is not a member of: `channel_not_found` (private) or `not_in_channel` (public)."""
        self.locked[channel] = error

    def response_url(self, key: str) -> str:
        return f"{self.base_url}/response/{key}"

    # --- what tests read ---

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def responses(self, key: str) -> list[dict[str, Any]]:
        return [call.args["body"] for call in self.calls_to("response") if call.args["key"] == key]

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The thread's messages now, oldest first (the parent included)."""
        found = [m for m in self.messages.get(channel, []) if thread_ts in (m["ts"], m.get("thread_ts"))]
        return sorted(found, key=lambda message: float(message["ts"]))

    def bot_replies(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        return [m for m in self.thread(channel, thread_ts) if m.get("bot_id") == BOT_ID]

    def file_body(self, file: dict[str, Any]) -> bytes:
        """The bytes of a file a message carries."""
        return self.files[file["id"]].body

    async def wait_for(self, condition: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll until `condition()` is truthy; returns its value, or fails the test after `timeout`."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for the app")
            await asyncio.sleep(0.01)
        return value

    # --- Socket Mode ---

    async def send_envelope(self, kind: str, payload: dict[str, Any], retry_attempt: int = 0) -> str:
        """Push an envelope ("slash_commands", "events_api") to the connected app; returns its id."""
        await self.wait_for(lambda: self._sockets)
        envelope_id = uuid.uuid4().hex
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
        }
        if kind == "events_api":
            envelope.update(retry_attempt=retry_attempt, retry_reason="timeout" if retry_attempt else "")
        await self._sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_str(json.dumps({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0TEST"}}))
        async for frame in socket:
            if frame.type == WSMsgType.TEXT:
                self.calls.append(Call("socket_ack", json.loads(frame.data)))
        return socket

    # --- faults ---

    def _fault(self, method: str) -> Fault | None:
        """The fault to serve for this call of `method`, if any (counting the call)."""
        for fault in self.faults:
            if fault.method != method:
                continue
            if fault.after:
                fault.after -= 1
                return None
            if fault.times is not None:
                if fault.times == 0:
                    continue
                fault.times -= 1
            return fault
        return None

    async def _serve_fault(self, request: web.Request, fault: Fault, *, error_status: int = 200) -> web.StreamResponse:
        """`error_status`: the Web API answers its errors with 200; a response_url with 404 and the like."""
        if fault.kind == "json_error":
            return web.json_response({"ok": False, "error": "fatal_error"}, status=error_status)
        if fault.kind == "text_405":
            return web.Response(status=405, text="Method Not Allowed", content_type="text/plain")
        if fault.kind == "html_502":
            return web.Response(status=502, text=BAD_GATEWAY_PAGE, content_type="text/html")
        if fault.kind == "timeout":
            await asyncio.sleep(FAULT_DELAY)
            return web.json_response({"ok": False, "error": "too_late"})
        if request.transport is not None:  # "drop": hang up without a word
            request.transport.close()
        return web.Response()

    # --- the Web API ---

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.body_exists:
            args.update(await request.post())
        if isinstance(args.get("blocks"), str):
            args["blocks"] = json.loads(args["blocks"])
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token if scheme == "Bearer" else args.pop("token", None)
        self.calls.append(Call(method, args, token))
        if fault := self._fault(method):
            return await self._serve_fault(request, fault)
        if token not in (self.bot_token, self.app_token) or token is None:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if (locked := self.locked.get(str(args.get("channel") or args.get("channel_id")))) is not None:
            return web.json_response({"ok": False, "error": locked})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        result = handler(args)
        return web.json_response({"ok": "error" not in result, **result})

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://stand-in.slack.com/",
            "team": "Stand-in",
            "user": "iobot",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        message = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "text": args.get("text", ""),
            "blocks": args.get("blocks", []),
            "ts": self.next_ts(),
        }
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        self.messages.setdefault(args["channel"], []).append(message)
        return {"channel": args["channel"], "ts": message["ts"], "message": message}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._find(args["channel"], args["ts"])
        if message is None:
            return {"error": "message_not_found"}
        message["text"] = args.get("text", "")
        if "blocks" in args:
            message["blocks"] = args["blocks"]
        return {"channel": args["channel"], "ts": args["ts"], "text": message["text"]}

    def _chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        """As Slack: a message in a thread that grows with each chat.appendStream until chat.stopStream.
        Outside a DM Slack wants to know whom the stream is for."""
        if not self.streaming:
            return {"error": "not_allowed"}
        if not args.get("thread_ts"):
            return {"error": "invalid_arguments"}
        if not str(args["channel"]).startswith("D") and not (args.get("recipient_user_id") and args.get("recipient_team_id")):
            return {"error": "missing_recipient_user_id"}
        message = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "text": args.get("markdown_text", ""),
            "blocks": [],
            "ts": self.next_ts(),
            "thread_ts": args["thread_ts"],
            "streaming": True,
        }
        self.messages.setdefault(args["channel"], []).append(message)
        return {"channel": args["channel"], "ts": message["ts"]}

    def _streaming(self, args: dict[str, Any]) -> dict[str, Any]:
        """The stream `args` name (channel and ts), or the error Slack answers when there is none."""
        message = self._find(args["channel"], args["ts"])
        if message is None:
            return {"error": "message_not_found"}
        if not message.get("streaming"):
            return {"error": "message_not_in_streaming_state"}
        return message

    def _chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(args)
        if "error" in message:
            return message
        message["text"] += args.get("markdown_text", "")
        return {"channel": args["channel"], "ts": args["ts"]}

    def _chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        """The last text joins the message, which then shows it as a markdown block, with `blocks` after it."""
        message = self._streaming(args)
        if "error" in message:
            return message
        message["text"] += args.get("markdown_text", "")
        message["blocks"] = [{"type": "markdown", "text": message["text"]}, *args.get("blocks", [])]
        message["streaming"] = False
        return {"channel": args["channel"], "ts": args["ts"], "message": message}

    def _assistant_threads_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        return {} if args.get("channel_id") and args.get("thread_ts") and "status" in args else {"error": "invalid_arguments"}

    def _assistant_threads_setSuggestedPrompts(self, args: dict[str, Any]) -> dict[str, Any]:
        prompts = args.get("prompts")
        valid = isinstance(prompts, list) and 0 < len(prompts) <= 4 and all("title" in p and "message" in p for p in prompts)
        return {} if args.get("channel_id") and valid else {"error": "invalid_arguments"}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._find(args["channel"], args["ts"])
        if message is None:
            return {"error": "message_not_found"}
        self.messages[args["channel"]].remove(message)
        return {"channel": args["channel"], "ts": args["ts"]}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"message_ts": self.next_ts()}

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        """As Slack: oldest first, `oldest`/`latest` bound the replies (exclusive unless `inclusive`), the
        first page starts with the parent (carrying `reply_count`), and a cursor pages on."""
        found = self.thread(args["channel"], args["ts"])
        if not found:
            return {"error": "thread_not_found"}
        parent, replies = {**found[0], "reply_count": len(found) - 1}, found[1:]
        inclusive = str(args.get("inclusive", "")).lower() in ("1", "true")
        if args.get("oldest"):
            oldest = float(args["oldest"])
            replies = [m for m in replies if float(m["ts"]) > oldest or (inclusive and float(m["ts"]) == oldest)]
        if args.get("latest"):
            latest = float(args["latest"])
            replies = [m for m in replies if float(m["ts"]) < latest or (inclusive and float(m["ts"]) == latest)]
        listed = [parent, *replies]
        start, limit = int(args.get("cursor") or 0), int(args.get("limit") or 1000)
        page = listed[start : start + limit]
        more = start + limit < len(listed)
        return {"messages": page, "has_more": more, "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        """As Slack: a channel's messages (thread replies left out), newest first, after `oldest`, `limit` at most."""
        found = [m for m in self.messages.get(args["channel"], []) if m.get("thread_ts") in (None, m["ts"])]
        if args.get("oldest"):
            found = [m for m in found if float(m["ts"]) > float(args["oldest"])]
        found.sort(key=lambda message: float(message["ts"]), reverse=True)
        limit = int(args.get("limit") or 100)
        return {"messages": found[:limit], "has_more": len(found) > limit}

    def _files_info(self, args: dict[str, Any]) -> dict[str, Any]:
        stored = self.files.get(args["file"])
        if stored is None:
            return {"error": "file_not_found"}
        link = f"{self.base_url}/files/{stored.id}/{stored.name}"
        return {
            "file": {
                "id": stored.id,
                "name": stored.name,
                "mimetype": stored.mimetype,
                "size": len(stored.body),
                "url_private": link,
                "url_private_download": link,
            }
        }

    def _files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        length = str(args.get("length", ""))
        if not args.get("filename") or not length.isdigit():
            return {"error": "invalid_arguments"}
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self.uploads[file_id] = Upload(file_id, args["filename"], int(length))
        return {"upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def _files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        """Share uploaded files: each becomes a stored file, and one message carries them all."""
        listed = json.loads(args["files"]) if isinstance(args.get("files"), str) else args.get("files")
        if not isinstance(listed, list) or not listed:
            return {"error": "invalid_arguments"}
        uploads = [self.uploads.get(str(item.get("id"))) for item in listed]
        if not all(upload is not None and upload.body is not None for upload in uploads):
            return {"error": "file_not_found"}  # announced but never sent, or never announced
        shared = []
        for item, upload in zip(listed, uploads, strict=True):
            assert upload is not None and upload.body is not None
            mimetype = mimetypes.guess_type(upload.name)[0] or "application/octet-stream"
            self.files[upload.id] = StoredFile(upload.id, upload.name, upload.body, mimetype)
            link = f"{self.base_url}/files/{upload.id}/{upload.name}"
            title = item.get("title") or upload.name
            shared.append(
                {
                    "id": upload.id,
                    "name": upload.name,
                    "title": title,
                    "mimetype": mimetype,
                    "size": len(upload.body),
                    "url_private": link,
                }
            )
        if args.get("channel_id"):
            message = {
                "type": "message",
                "user": BOT_USER_ID,
                "bot_id": BOT_ID,
                "text": args.get("initial_comment") or "",
                "files": shared,
                "upload": True,
                "ts": self.next_ts(),
            }
            if args.get("thread_ts"):
                message["thread_ts"] = args["thread_ts"]
            self.messages.setdefault(args["channel_id"], []).append(message)
        return {"files": [{"id": file["id"], "title": file["title"]} for file in shared]}

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not isinstance(view, dict) or view.get("type") != "home" or not args.get("user_id"):
            return {"error": "invalid_arguments"}
        self.home_views[args["user_id"]] = view
        return {"view": {"id": "V" + uuid.uuid4().hex[:10].upper(), **view}}

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": self.base_url.replace("http://", "ws://") + "/socket"}

    def _find(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self.messages.get(channel, []) if m["ts"] == ts), None)

    # --- files and response_url ---

    async def _download(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        self.calls.append(Call("download", {"path": request.path, "host": request.host}, token or None))
        if fault := self._fault("download"):
            return await self._serve_fault(request, fault)
        stored = self.files.get(request.match_info["id"])
        if stored is None:
            raise web.HTTPNotFound()
        if stored.redirect_to:
            raise web.HTTPFound(stored.redirect_to)
        if stored.html or scheme != "Bearer" or token != self.bot_token:
            return web.Response(text=SIGN_IN_PAGE, content_type="text/html")
        return web.Response(body=stored.body, content_type=stored.mimetype)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        """The upload URL: the bytes as the body, or as a multipart form's file, as Slack takes either."""
        if request.content_type == "multipart/form-data":
            form = await request.post()
            file = next((value for value in form.values() if isinstance(value, web.FileField)), None)
            body = file.file.read() if file is not None else b""
        else:
            body = await request.read()
        file_id = request.match_info["id"]
        _, _, token = request.headers.get("Authorization", "").partition(" ")
        self.calls.append(Call("upload", {"file_id": file_id, "size": len(body)}, token or None))
        if fault := self._fault("upload"):
            return await self._serve_fault(request, fault, error_status=500)
        upload = self.uploads.get(file_id)
        if upload is None:
            return web.Response(status=404, text="Not Found", content_type="text/plain")
        upload.body = body
        return web.Response(text=f"OK - {len(body)}", content_type="text/plain")

    async def _response(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if fault := self._fault("response"):
            self.calls.append(Call("response_failed", {"key": request.match_info["key"], "body": body}))
            return await self._serve_fault(request, fault, error_status=404)
        self.calls.append(Call("response", {"key": request.match_info["key"], "body": body}))
        return web.Response(text="ok")


# --- signed requests, as Slack sends them ---------------------------------------------------------


def signed_headers(body: str, signing_secret: str, content_type: str, *, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=stamp, body=body)
    assert signature is not None, "Slack's verifier signs whenever it is given a timestamp and a body"
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature}


def command_fields(text: str, *, user: str, response_url: str, trigger_id: str, channel: str = "C0GENERAL") -> dict[str, str]:
    """A `/io` slash command's fields."""
    return {
        "token": "deprecated-verification-token",
        "team_id": TEAM_ID,
        "team_domain": "stand-in",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": user.lower(),
        "command": "/io",
        "text": text,
        "api_app_id": "A0TEST",
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id,
    }


def command_body(text: str, **fields: str) -> str:
    """A `/io` slash command, form-encoded as Slack posts it over HTTP."""
    return urlencode(command_fields(text, **fields))


def event_fields(event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    """An Events API delivery wrapping `event`."""
    return {
        "token": "deprecated-verification-token",
        "team_id": TEAM_ID,
        "api_app_id": "A0TEST",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
    }


def event_body(event: dict[str, Any], *, event_id: str | None = None) -> str:
    """An Events API delivery, as JSON as Slack posts it over HTTP."""
    return json.dumps(event_fields(event, event_id=event_id))


def shortcut_fields(
    callback_id: str, message: dict[str, Any], *, user: str, channel: str, response_url: str, trigger_id: str
) -> dict[str, Any]:
    """A message shortcut's payload (`message_action`), used on `message` in `channel` by `user`."""
    return {
        "type": "message_action",
        "token": "deprecated-verification-token",
        "action_ts": f"{time.time():.6f}",
        "team": {"id": TEAM_ID, "domain": "stand-in"},
        "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID, "name": user.lower()},
        "channel": {"id": channel, "name": "general"},
        "is_enterprise_install": False,
        "enterprise": None,
        "callback_id": callback_id,
        "trigger_id": trigger_id,
        "response_url": response_url,
        "message_ts": message["ts"],
        "message": {key: value for key, value in message.items() if key not in ("channel", "channel_type", "event_ts")},
    }


def interaction_body(payload: dict[str, Any]) -> str:
    """An interaction (a shortcut, a button), form-encoded with its JSON in `payload`, as Slack posts it over HTTP."""
    return urlencode({"payload": json.dumps(payload)})


def home_opened_event(user: str, *, tab: str = "home") -> dict[str, Any]:
    """`app_home_opened`: `user` opened iobot's Home tab (or its Messages tab)."""
    return {"type": "app_home_opened", "user": user, "channel": "D0" + user[1:], "tab": tab, "event_ts": f"{time.time():.6f}"}
