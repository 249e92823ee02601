"""The service's HTTP server: `GET /healthz` now; Slack events and metrics mount here too."""

from __future__ import annotations

from aiohttp import web


def make_http_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def start_http_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Listen on host:port; raises OSError with a clear message when the port is taken."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror}); set IOBOT_HOST / IOBOT_PORT") from None
    return runner
