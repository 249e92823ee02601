"""A local stand-in for the IO Intelligence API, for development, `iobot run --emulator` and tests.

It speaks the endpoints of io-intelligence-api.md on aiohttp with deterministic answers and realistic
token counts, so the whole service runs with no account and no network. Faults (error statuses,
Cloudflare HTML pages, slow answers, cut streams, dropped connections) are queued with `inject` or
over HTTP at `/_emulator/faults`, so a test can also drive an emulator running in another process.

A request under /api/v1 goes: record it, take a pending fault, route, check the key, validate the
body, wait `answer_delay` (chat and workflows only), answer. Only recent requests stay recorded (see
`Emulator`), so an emulator serving for days stays the size it started at. This module is the
server; the answers are made up in `emulator.chat` and `emulator.workflows`, the error bodies in
`emulator.errors`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from aiohttp import web

from core.quotas import DEFAULT_CONTEXT_LENGTH, QuotaTable, load_quota_table
from emulator.chat import MAX_IMAGE_BYTES, MAX_IMAGES, answer_chat
from emulator.errors import ApiError, context_error, field_error, reason, unprocessable
from emulator.workflows import WORKFLOW_SCHEMA, agents_listing, run_workflow

API_PREFIX = "/api/v1"
# Ten base64 images at the size limit, with room for the text around them.
MAX_BODY_BYTES = 2 * MAX_IMAGES * MAX_IMAGE_BYTES
# A fixed `created` keeps the OpenAI-shaped model list identical from run to run.
MODELS_CREATED = 1_735_689_600
# How much of the request record is kept: far more than a test reads, far less than days of serving.
KEEP_REQUESTS = 1000
KEEP_BODY_BYTES = 64 * 1024 * 1024

FaultKind = Literal["status", "html", "slow", "cut_stream", "context_length", "drop"]
Reply = dict[str, Any] | list[dict[str, Any]]  # a JSON body, or the chunks of an SSE stream
Handler = Callable[[Any], Awaitable[Reply]]


@dataclass
class Fault:
    """One misbehaviour, served to the next `times` matching requests."""

    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    path: str | None = None
    model: str | None = None
    times: int = 1

    def __post_init__(self) -> None:
        if self.kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times < 1:
            raise ValueError("times must be at least 1")

    def matches(self, path: str, body: Any) -> bool:
        if self.path is not None and self.path != path:
            return False
        return self.model is None or (isinstance(body, dict) and body.get("model") == self.model)


@dataclass
class RecordedRequest:
    """One request under /api/v1 as the emulator saw it, for tests to inspect."""

    method: str
    path: str
    body: Any
    authorized: bool
    fault: str | None


class Emulator:
    """The IO Intelligence API on 127.0.0.1, with faults on demand and a record of recent requests.

    `requests` lists the most recent requests, oldest first: the last `keep_requests` of them, fewer
    when their bodies add up to more than `keep_body_bytes` (the latest is always kept), so that
    memory stays flat however long the emulator serves.

    `models_shape="openai"` lists models in OpenAI's shape alone, as some deployments do; by default
    each entry carries both shapes, so that every client finds what it reads.
    """

    def __init__(
        self,
        quotas: QuotaTable | None = None,
        *,
        api_key: str | None = None,
        answer_delay: float = 0.0,
        models_shape: Literal["both", "openai"] = "both",
        keep_requests: int = KEEP_REQUESTS,
        keep_body_bytes: int = KEEP_BODY_BYTES,
    ) -> None:
        if keep_requests < 1 or keep_body_bytes < 0:
            raise ValueError("the emulator keeps at least the latest request")
        self.quotas = quotas if quotas is not None else load_quota_table()
        self._api_key = api_key
        self.answer_delay = answer_delay
        self.models_shape = models_shape
        self._recent: deque[tuple[RecordedRequest, int]] = deque(maxlen=keep_requests)  # with its body's size
        self._recent_body_bytes = 0
        self._keep_body_bytes = keep_body_bytes
        self.base_url = ""  # set by start()
        self._faults: list[Fault] = []
        self._reported: dict[str, dict[str, int]] = {}  # model -> tokens reported in answers, for accounting tests
        self._runner: web.AppRunner | None = None
        self._routes: dict[str, dict[str, Handler]] = {
            "/chat/completions": {"POST": self._chat},
            "/models": {"GET": self._models},
            "/agents": {"GET": self._agents},
            "/workflows/schema": {"GET": self._workflow_schema},
            "/workflows/run": {"POST": self._run_workflow},
        }

    def inject(self, *faults: Fault) -> None:
        # Copies, so that counting down `times` never changes the caller's objects.
        self._faults.extend(dataclasses.replace(fault) for fault in faults)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """The recent requests, oldest first (a copy: later requests do not change it)."""
        return [recorded for recorded, _ in self._recent]

    def clear_requests(self) -> None:
        self._recent.clear()
        self._recent_body_bytes = 0

    @property
    def reported_usage(self) -> dict[str, dict[str, int]]:
        """Per model, the answers that reported usage and the tokens they reported since the start."""
        return {model: dict(counts) for model, counts in self._reported.items()}

    def _count_usage(self, model: Any, reply: Reply, cut: bool) -> None:
        """Add the usage an answer reports (a cut stream never sends its usage chunk)."""
        last = reply[-1] if isinstance(reply, list) else reply
        usage = last.get("usage") if last and not cut else None
        if not isinstance(usage, dict) or not isinstance(model, str):
            return
        counts = self._reported.setdefault(model, {"answers": 0, "prompt_tokens": 0, "completion_tokens": 0})
        counts["answers"] += 1
        counts["prompt_tokens"] += usage["prompt_tokens"]
        counts["completion_tokens"] += usage["completion_tokens"]

    def _record(self, recorded: RecordedRequest, body_bytes: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_body_bytes -= self._recent[0][1]  # the deque drops the oldest on append
        self._recent.append((recorded, body_bytes))
        self._recent_body_bytes += body_bytes
        while self._recent_body_bytes > self._keep_body_bytes and len(self._recent) > 1:
            self._recent_body_bytes -= self._recent.popleft()[1]

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", API_PREFIX + "/{path:.*}", self._serve_api)
        app.router.add_post("/_emulator/faults", self._add_fault)
        app.router.add_delete("/_emulator/faults", self._delete_faults)
        app.router.add_get("/_emulator/requests", self._list_requests)
        app.router.add_delete("/_emulator/requests", self._delete_requests)
        app.router.add_get("/_emulator/usage", self._list_usage)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # A short shutdown timeout: stopping should not wait long for a slow fault still sleeping.
        self._runner = web.AppRunner(self.make_app(), shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}{API_PREFIX}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- the API -------------------------------------------------------------------------------

    async def _serve_api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        raw = await request.read()
        body, body_error = _parse_json(raw)
        auth_problem = self._auth_problem(request)
        fault = self._take_fault(path, body)
        recorded = RecordedRequest(request.method, path, body, auth_problem is None, fault.kind if fault else None)
        self._record(recorded, len(raw))
        if fault is not None and fault.kind not in ("slow", "cut_stream"):
            return self._serve_fault(request, fault, body)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        try:
            handler = self._route(request.method, path)
            if auth_problem is not None:
                raise ApiError(401, auth_problem, headers={"WWW-Authenticate": "Bearer"})
            if body_error is not None:
                raise body_error
            reply = await handler(body)
        except ApiError as error:
            return error.response()
        cut = fault is not None and fault.kind == "cut_stream"
        if path == "/chat/completions":
            self._count_usage(body.get("model"), reply, cut)
        if isinstance(reply, list):
            return await _send_events(request, reply, cut)
        if cut:
            return await _send_half(request, reply)
        return web.json_response(reply)

    def _route(self, method: str, path: str) -> Handler:
        methods = self._routes.get(path)
        if methods is None:
            raise ApiError(404, "Not Found")
        if method not in methods:
            raise ApiError(405, "Method Not Allowed")
        return methods[method]

    def _auth_problem(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "Not authenticated"
        if self._api_key is not None and not hmac.compare_digest(token.encode(), self._api_key.encode()):
            return "Invalid API key"
        return None

    def _take_fault(self, path: str, body: Any) -> Fault | None:
        for fault in self._faults:
            if fault.matches(path, body):
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _serve_fault(self, request: web.Request, fault: Fault, body: Any) -> web.Response:
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return ApiError(fault.status, reason(fault.status), headers=headers).response()
        if fault.kind == "html":
            return web.Response(status=fault.status, text=_cloudflare_page(fault.status), content_type="text/html")
        if fault.kind == "context_length":
            model = body.get("model") if isinstance(body, dict) else None
            limits = self.quotas.get(model) if isinstance(model, str) else None
            limit = limits.context_tokens if limits else DEFAULT_CONTEXT_LENGTH
            return context_error(limit, limit + 1, 0).response()
        _hang_up(request)  # "drop"
        return web.Response()

    async def _chat(self, body: Any) -> Reply:
        return await answer_chat(body, self.quotas, self.answer_delay)

    async def _models(self, _body: Any) -> Reply:
        """Each model in OpenAI's shape (`id`, `object`) and io.net's newer one (`name`, `metadata`) at once."""
        data = [
            {"id": row.name, "object": "model", "created": MODELS_CREATED, "owned_by": "io-intelligence"} for row in self.quotas
        ]
        if self.models_shape == "openai":
            return {"object": "list", "data": data}
        for entry, row in zip(data, self.quotas):
            metadata = {"context_window": row.context_tokens, "supports_images_input": row.images}
            entry.update(name=row.name, model_id=row.name, metadata=metadata)
        return {"object": "list", "data": data, "pagination": {"page": 1, "page_size": len(data), "total": len(data)}}

    async def _agents(self, _body: Any) -> Reply:
        return agents_listing()

    async def _workflow_schema(self, _body: Any) -> Reply:
        return WORKFLOW_SCHEMA

    async def _run_workflow(self, body: Any) -> Reply:
        return await run_workflow(body, self.answer_delay)

    # --- control endpoints, without auth ---------------------------------------------------------

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault(**await request.json())
        except (ValueError, TypeError) as exc:
            return ApiError(400, f"Invalid fault: {exc}").response()
        self.inject(fault)
        return web.Response(status=204)

    async def _delete_faults(self, _request: web.Request) -> web.Response:
        self.clear_faults()
        return web.Response(status=204)

    async def _list_requests(self, _request: web.Request) -> web.Response:
        return web.json_response([dataclasses.asdict(recorded) for recorded in self.requests])

    async def _list_usage(self, _request: web.Request) -> web.Response:
        return web.json_response(self.reported_usage)

    async def _delete_requests(self, _request: web.Request) -> web.Response:
        self.clear_requests()
        return web.Response(status=204)


# --- wire helpers ----------------------------------------------------------------------------------


def _parse_json(raw: bytes) -> tuple[Any, ApiError | None]:
    """The body, or the 422 FastAPI gives for text that is not JSON."""
    if not raw:
        return None, None
    try:
        return json.loads(raw.decode("utf-8", "replace")), None
    except json.JSONDecodeError as exc:
        return None, unprocessable([field_error(["body", exc.pos], "JSON decode error", "json_invalid")])


async def _send_events(request: web.Request, chunks: list[dict[str, Any]], cut: bool) -> web.StreamResponse:
    """SSE as vLLM frames it; `cut` stops after the opening chunk and two more, with no [DONE]."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for chunk in chunks[:3] if cut else chunks:
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    if cut:
        _hang_up(request)
    else:
        await response.write(b"data: [DONE]\n\n")
    return response


async def _send_half(request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
    """Headers promising the whole JSON body, half of it, then a closed connection."""
    data = json.dumps(payload).encode()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    _hang_up(request)
    return response


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _cloudflare_page(status: int) -> str:
    phrase = reason(status)
    return f"""<!DOCTYPE html>
<html lang="en-US">
<head><meta charset="UTF-8"><title>api.intelligence.io.solutions | {status}: {phrase}</title></head>
<body>
<div id="cf-wrapper">
<h1><span class="cf-error-type">Error</span> <span class="cf-error-code">{status}</span></h1>
<h2 class="cf-subheadline">{phrase}</h2>
<p>The web server reported an error. Please try again in a few minutes.</p>
<p>Cloudflare Ray ID: <strong>8c1f2e3d4b5a6978</strong> &bull; Performance &amp; security by Cloudflare</p>
</div>
</body>
</html>
"""
