"""The composition root: settings in, a running iobot out. The only place that wires parts together.

The parts that take long to load (the chat platforms' libraries, aiohttp, Pillow, the API client, the
emulator) are imported inside the functions that build them, not with this module: the admin commands
(`iobot usage`, `limits`, `models`) use this module only to open the ledger, and start in a fraction of
the time.
"""

from __future__ import annotations

import asyncio
import gc
import getpass
import logging
import os
import signal
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from core.adapter import Adapter
from core.ledger import Ledger, LedgerError, LedgerWithStore, SQLiteLedger, Store
from core.quotas import QuotaTable, load_quota_table
from core.settings import PlatformSettings, Settings, SettingsError, load_settings

from . import logs

if TYPE_CHECKING:
    import httpx

    from core.client import IOClient
    from core.service import Service

log = logging.getLogger("iobot")

EMULATOR_KEY = "emulator-key"


async def open_client(settings: Settings, quotas: QuotaTable, stack: AsyncExitStack, *, emulator: bool) -> IOClient:
    """The API client, pointed at io.net or at an in-process emulator."""
    from core.client import IOClient

    if emulator:
        from emulator import Emulator

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


async def open_ledger(settings: Settings, stack: AsyncExitStack, *, owner: bool, create: bool = True) -> LedgerWithStore:
    """The ledger at IOBOT_DATABASE_URL, a SQLite file or a PostgreSQL database; `owner=False` for commands that
    run beside the service (reads and budgets only), `create=False` for those that must not leave a new ledger
    behind (`FileNotFoundError` when there is none)."""
    ledger: LedgerWithStore
    if settings.database_url.kind == "postgresql":
        from core.ledger.postgres import PostgresLedger  # its driver loads only for the databases that need it

        url = settings.database_url.get_secret_value()
        try:
            ledger = await PostgresLedger.open(url, user_daily_tokens=settings.user_daily_tokens, owner=owner, create=create)
        except LedgerError as exc:  # unreachable, refused: the message masks the password and names the setting
            raise LedgerError(f"IOBOT_DATABASE_URL: {exc}") from None
    else:
        ledger = await SQLiteLedger.open(
            settings.database_path, user_daily_tokens=settings.user_daily_tokens, owner=owner, create=create
        )
    stack.push_async_callback(ledger.close)
    return ledger


def make_service(
    settings: Settings, client: IOClient, ledger: Ledger, quotas: QuotaTable, http: httpx.AsyncClient, *, store: Store
) -> Service:
    from core.images import ImageLimits
    from core.service import Service, ServiceConfig

    config = ServiceConfig(
        model=settings.model,
        vision_model=settings.vision_model,
        fallback_models=tuple(settings.fallback_models),
        chat_models=tuple(settings.chat_models),
        admins=frozenset(settings.admins),
        max_tokens=settings.max_tokens,
        default_language=settings.default_language,
        image_limits=ImageLimits(target_side=settings.image_max_side),
        allow_loopback_images=settings.image_allow_loopback,
        user_requests_per_minute=settings.user_requests_per_minute,
        max_concurrent=settings.max_concurrent,
        queue_timeout=settings.queue_timeout,
    )
    return Service(client, ledger, quotas, config, http, store=store)


def platforms() -> tuple[tuple[type[PlatformSettings], Callable[..., Adapter]], ...]:
    """Every chat platform: its settings class and the function that builds its adapter from them."""
    from adapters import discord, slack

    return (
        (slack.SlackSettings, slack.build),
        (discord.DiscordSettings, discord.build),
    )


def build_adapters(settings: Settings, service: Service) -> list[Adapter]:
    """The adapters of the platforms whose credentials are set; the console when there is none."""
    from adapters.console import ConsoleAdapter

    # Small files an adapter keeps between runs: beside the SQLite ledger, else in the working directory.
    state_dir = Path(settings.database_path).resolve().parent if settings.database_url.kind == "sqlite" else Path.cwd()
    adapters: list[Adapter] = []
    for settings_class, build in platforms():
        platform_settings = load_settings(settings_class)
        if platform_settings.enabled:
            adapters.append(build(platform_settings, service, state_dir=state_dir))
    if adapters:
        return adapters
    console = ConsoleAdapter(service, user=getpass.getuser(), history_file=console_history_file())
    if console.interactive:
        logs.warnings_only()  # the chat is on screen: a log line per request would cut through it
    return [console]


def console_history_file() -> Path:
    """Where the terminal chat keeps the messages typed (Up recalls them): the user's state directory."""
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home) / "iobot" / "console-history"


async def start_adapters(adapters: Sequence[Adapter], stop: asyncio.Event) -> None:
    """Start each adapter in turn; a signal while one is still connecting leaves the rest unstarted."""
    for adapter in adapters:
        starting = asyncio.create_task(adapter.start(), name=f"{adapter.name} start")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            starting.cancel()
            await asyncio.wait({starting})
            return
        starting.result()  # a refused credential: AdapterError


def http_host(settings: Settings, adapters: Sequence[Adapter]) -> str:
    """IOBOT_HOST when it is set, or when a chat platform needs reaching; else, for the terminal chat, loopback only."""
    terminal_only = all(adapter.name == "console" for adapter in adapters)
    return "127.0.0.1" if terminal_only and "host" not in settings.model_fields_set else settings.host


async def run(settings: Settings, *, emulator: bool) -> int:
    """`iobot run`: every configured adapter plus the HTTP server; the console when no platform is set.

    SIGTERM or SIGINT (or an adapter ending: the console at the end of its input) stops it: no new
    work is taken, work in flight gets IOBOT_SHUTDOWN_GRACE seconds, what is left is cancelled
    (releasing its reservations), the HTTP server stops, each adapter posts what was finished and
    disconnects, and the ledger is closed cleanly. Raises `AdapterError` when a platform refuses its
    credentials at start; returns the exit code: 1 if an adapter stopped with an error later.
    """
    import httpx

    from core.http_transport import aiohttp_transport
    from core.images import ImageLimits

    from . import checks
    from .dashboard import Dashboard
    from .http import HealthState, make_http_app, start_http_server

    log.info(checks.env_file_note())
    for finding in checks.variable_findings():
        log.warning("%s", finding.message)
    quotas = load_quota_table(settings.quota_file)
    async with AsyncExitStack() as stack:
        ledger = await open_ledger(settings, stack, owner=True)
        client = await open_client(settings, quotas, stack, emulator=emulator)
        findings = await checks.run_findings(settings, quotas, client)
        for finding in findings:
            log.log(logging.ERROR if finding.level == "error" else logging.WARNING, "%s", finding.message)
        if any(finding.level == "error" for finding in findings):
            raise SettingsError("the start-up checks found errors (iobot check lists them)")
        # Downloads of images and files: no credential by default, no redirects followed.
        http = await stack.enter_async_context(
            httpx.AsyncClient(follow_redirects=False, timeout=ImageLimits.timeout, transport=aiohttp_transport())
        )
        service = make_service(settings, client, ledger, quotas, http, store=ledger.store)
        health = HealthState(ledger, client, quotas)
        adapters = build_adapters(settings, service)
        for adapter in adapters:
            stack.push_async_callback(adapter.stop)  # once the HTTP server has stopped (a stack unwinds last first)
        dashboard = None
        if settings.admin_token is not None:
            dashboard = Dashboard(
                settings.admin_token, ledger, ledger.store, quotas, user_daily_tokens=settings.user_daily_tokens
            )
        web_app = make_http_app(health, [route for adapter in adapters for route in adapter.routes()], dashboard)
        host = http_host(settings, adapters)
        runner, port = await start_http_server(web_app, host, settings.port)
        stack.push_async_callback(runner.cleanup)
        log.info("HTTP server on %s:%d", host, port)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
            stack.callback(loop.remove_signal_handler, signum)
        await start_adapters(adapters, stop)
        # What start-up made lives as long as the process: out of the collector's full passes, which
        # would scan all of it (20 to 40 ms with everything loaded here) and hold acknowledgements up.
        gc.freeze()
        # One adapter ending (the end of the console's input, a gateway closed for good) stops the process.
        endings = [asyncio.create_task(adapter.wait(), name=adapter.name) for adapter in adapters]
        for ending in endings:
            ending.add_done_callback(lambda _: stop.set())

        await stop.wait()
        health.stopping = True
        log.info("stopping: finishing work in flight (up to %g s)", settings.shutdown_grace)
        cancelled = await service.drain(settings.shutdown_grace)
        if cancelled:
            log.warning("cancelled %d request(s) still running after the grace period", cancelled)
        await stack.aclose()  # the HTTP server, then each adapter, then the API client and the ledger
        failures = [
            outcome for outcome in await asyncio.gather(*endings, return_exceptions=True) if isinstance(outcome, Exception)
        ]
        for failure in failures:
            log.error("an adapter stopped with an error: %s", failure)
    log.info("stopped")
    return 1 if failures else 0
