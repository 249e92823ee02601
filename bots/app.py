"""The composition root: settings in, a running iobot out. The only place that wires parts together."""

from __future__ import annotations

import asyncio
import getpass
import logging
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import httpx
from aiohttp import web
from slack_sdk.errors import SlackApiError

from adapters.console import ConsoleAdapter
from adapters.discord import DiscordAccess, DiscordAdapter
from adapters.slack import SlackAdapter
from core.client import IOClient
from core.images import ImageLimits
from core.ledger import Ledger, SQLiteLedger
from core.quotas import QuotaTable, load_quota_table
from core.service import Service, ServiceConfig
from core.settings import Settings, SettingsError
from emulator import Emulator

from .http import HealthState, make_http_app, start_http_server

log = logging.getLogger("iobot")

EMULATOR_KEY = "emulator-key"


async def open_client(settings: Settings, quotas: QuotaTable, stack: AsyncExitStack, *, emulator: bool) -> IOClient:
    """The API client, pointed at io.net or at an in-process emulator."""
    if emulator:
        emu = Emulator(quotas, api_key=EMULATOR_KEY)
        await emu.start("127.0.0.1", 0)
        stack.push_async_callback(emu.stop)
        base_url, key = emu.base_url, EMULATOR_KEY
        log.info("serving the API from the built-in emulator at %s", base_url)
    else:
        if settings.api_key is None:
            raise SettingsError("IOINTELLIGENCE_API_KEY is not set: set it, or run with --emulator")
        base_url, key = settings.base_url, settings.api_key.get_secret_value()
    client = IOClient(base_url, key, timeout=settings.api_timeout, max_retries=settings.max_retries)
    stack.push_async_callback(client.aclose)
    return client


async def open_ledger(settings: Settings, stack: AsyncExitStack, *, owner: bool) -> SQLiteLedger:
    """The ledger file; `owner=False` for commands that run beside the service (reads and budgets only)."""
    ledger = await SQLiteLedger.open(settings.database_path, user_daily_tokens=settings.user_daily_tokens, owner=owner)
    stack.push_async_callback(ledger.close)
    return ledger


def make_service(
    settings: Settings, client: IOClient, ledger: Ledger, quotas: QuotaTable, http: httpx.AsyncClient
) -> Service:
    for name in (settings.model, settings.vision_model, *settings.fallback_models):
        if name not in quotas:
            log.warning("model %s is not in the quota table: its daily quota is not enforced", name)
    config = ServiceConfig(
        model=settings.model,
        vision_model=settings.vision_model,
        fallback_models=tuple(settings.fallback_models),
        max_tokens=settings.max_tokens,
        image_limits=ImageLimits(target_side=settings.image_max_side),
        allow_loopback_images=settings.image_allow_loopback,
        user_requests_per_minute=settings.user_requests_per_minute,
        max_concurrent=settings.max_concurrent,
        queue_timeout=settings.queue_timeout,
    )
    return Service(client, ledger, quotas, config, http)


async def start_slack(
    settings: Settings, service: Service, web_app: web.Application, stack: AsyncExitStack
) -> SlackAdapter:
    """Slack over HTTP (routes on the service's server) or, with SLACK_APP_TOKEN, over Socket Mode."""
    slack = SlackAdapter(
        service,
        bot_token=settings.slack_bot_token.get_secret_value(),
        signing_secret=settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None,
        api_url=settings.slack_api_url,
        file_hosts=settings.slack_file_hosts,
        image_limits=service.config.image_limits,
    )
    stack.push_async_callback(slack.close)  # runs after the drain, once the HTTP server has stopped
    try:
        await slack.bolt.client.auth_test()
    except SlackApiError as exc:
        raise SettingsError(f"Slack refused SLACK_BOT_TOKEN ({exc.response.get('error')})") from None
    except aiohttp.ClientError as exc:
        raise SettingsError(f"cannot reach Slack at SLACK_API_URL ({type(exc).__name__})") from None
    if settings.slack_app_token is None:
        slack.add_routes(web_app)  # before the server starts: aiohttp freezes its routes then
    else:
        await slack.start_socket_mode(settings.slack_app_token.get_secret_value())
    return slack


async def run(settings: Settings, *, emulator: bool) -> int:
    """`iobot run`: every configured adapter plus the HTTP server; the console when no platform is set.

    SIGTERM or SIGINT (or the console's end of input) stops it: no new work is taken, work in flight
    gets IOBOT_SHUTDOWN_GRACE seconds, what is left is cancelled (releasing its reservations), and
    the ledger is closed cleanly. Returns the exit code: 1 if an adapter failed (a refused token).
    """
    quotas = load_quota_table(settings.quota_file)
    async with AsyncExitStack() as stack:
        ledger = await open_ledger(settings, stack, owner=True)
        client = await open_client(settings, quotas, stack, emulator=emulator)
        # Downloads of images and files: no credential by default, no redirects followed.
        http = await stack.enter_async_context(httpx.AsyncClient(follow_redirects=False, timeout=ImageLimits.timeout))
        service = make_service(settings, client, ledger, quotas, http)
        health = HealthState(ledger, client, quotas)
        web_app = make_http_app(health)
        slack = await start_slack(settings, service, web_app, stack) if settings.slack_enabled else None
        runner, port = await start_http_server(web_app, settings.host, settings.port)
        stack.push_async_callback(runner.cleanup)
        log.info("HTTP server on %s:%d", settings.host, port)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # Each adapter runs as a task; one ending (end of input, a refused token) stops the process.
        tasks: list[asyncio.Task] = []
        discord_bot: DiscordAdapter | None = None
        console: ConsoleAdapter | None = None
        if settings.discord_enabled:
            discord_bot = DiscordAdapter(
                service,
                token=settings.discord_bot_token.get_secret_value(),
                api_url=settings.discord_api_url,
                gateway_url=settings.discord_gateway_url,
                access=DiscordAccess.from_settings(settings),
                image_limits=service.config.image_limits,
                state_dir=Path(settings.database_path).resolve().parent,  # noqa: ASYNC240 (once, at start)
            )
            tasks.append(asyncio.create_task(discord_bot.start(), name="discord"))
        if not tasks and slack is None:
            console = ConsoleAdapter(service, user=getpass.getuser())
            tasks.append(asyncio.create_task(console.run(), name="console"))
        for task in tasks:
            task.add_done_callback(lambda _: stop.set())

        await stop.wait()
        health.stopping = True
        if console is not None:
            console.stop()
        log.info("stopping: finishing work in flight (up to %g s)", settings.shutdown_grace)
        cancelled = await service.drain(settings.shutdown_grace)
        if cancelled:
            log.warning("cancelled %d request(s) still running after the grace period", cancelled)
        if discord_bot is not None:
            await discord_bot.close()  # after the drain: it lets the last answers be posted
        failures = [outcome for outcome in await asyncio.gather(*tasks, return_exceptions=True) if isinstance(outcome, Exception)]
        for failure in failures:
            log.error("an adapter stopped with an error: %s", failure)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped")
    return 1 if failures else 0
