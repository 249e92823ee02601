"""The service's HTTP server: `GET /healthz`, `GET /metrics`, and the Slack adapter's `POST /slack/events`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core import metrics
from core.client import IOClient
from core.ledger import Ledger
from core.quotas import QuotaTable
from core.settings import mask_passwords


class HealthState:
    """What /healthz and /metrics read; `stopping` turns /healthz to 503 so traffic goes elsewhere."""

    def __init__(self, ledger: Ledger, client: IOClient, quotas: QuotaTable) -> None:
        self.ledger = ledger
        self.client = client
        self.quotas = quotas
        self.stopping = False


STATE = web.AppKey("state", HealthState)


def make_http_app(state: HealthState, routes: Iterable[web.AbstractRouteDef] = ()) -> web.Application:
    """/healthz and /metrics, plus the adapters' routes (Slack's `POST /slack/events`)."""
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_routes(routes)
    return app


async def _healthz(request: web.Request) -> web.Response:
    """Process up, database reachable, and the last API error, if any (an API outage is not our ill health).

    503 when the database does not answer: this replica could charge no one, so traffic should go elsewhere.
    """
    state = request.app[STATE]
    database = {"kind": state.ledger.kind, "ok": True}
    body: dict[str, Any] = {"status": "ok", "ledger": "ok", "database": database, "last_api_error": None}
    try:
        await state.ledger.ping()
    except Exception as exc:  # any failure to reach the ledger means we cannot charge anyone
        body.update(status="failing", ledger=f"unreachable: {type(exc).__name__}")
        database["ok"] = False
    if state.client.last_error is not None:
        when, what = state.client.last_error
        body["last_api_error"] = {"seconds_ago": round(time.time() - when), "error": mask_passwords(what)}
    if state.stopping:
        body["status"] = "stopping"
    return web.json_response(body, status=200 if body["status"] == "ok" else 503)


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    used = await state.ledger.model_totals()
    for row in state.quotas.chat_models():
        if row.api_daily_tokens is not None:
            metrics.QUOTA_REMAINING.labels(row.name).set(max(0, row.api_daily_tokens - used.get(row.name, 0)))
    metrics.RESERVATIONS_IN_FLIGHT.set(await state.ledger.reservations_in_flight())
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start_http_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Listen on host:port; returns the runner and the port bound (useful with port 0)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror}); set IOBOT_HOST / IOBOT_PORT") from None
    return runner, runner.addresses[0][1]
