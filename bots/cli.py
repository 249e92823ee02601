"""`iobot`: the command line. Subcommands: run, emulator, models, agents."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from contextlib import AsyncExitStack

from core.emulator import Emulator
from core.errors import IOIntelligenceError
from core.quotas import QuotaFileError, load_quota_table
from core.render import render_agents, render_models, to_plain
from core.settings import Settings, SettingsError, load_settings

from . import app


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(
            level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)
        return asyncio.run(args.handler(args, settings)) or 0
    except (SettingsError, QuotaFileError, OSError) as exc:
        print(f"iobot: {exc}", file=sys.stderr)
        return 2
    except IOIntelligenceError as exc:
        print(f"iobot: {exc.user_message} ({exc})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iobot", description="Slack and Discord bots for the IO Intelligence API.")
    commands = parser.add_subparsers(required=True, metavar="command")

    run = commands.add_parser("run", help="run the bots (the terminal chat when no platform is configured)")
    run.add_argument("--emulator", action="store_true", help="serve the API from the built-in emulator")
    run.set_defaults(handler=_run)

    emulator = commands.add_parser("emulator", help="serve the built-in API emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8000)
    emulator.add_argument("--delay", type=float, default=0.0, help="seconds every answer takes")
    emulator.set_defaults(handler=_emulator)

    models = commands.add_parser("models", help="the per-model daily quota table")
    models.set_defaults(handler=_models)

    agents = commands.add_parser("agents", help="the API's predefined agents")
    agents.add_argument("--emulator", action="store_true", help="ask the built-in emulator")
    agents.set_defaults(handler=_agents)
    return parser


async def _run(args: argparse.Namespace, settings: Settings) -> None:
    await app.run(settings, emulator=args.emulator)


async def _emulator(args: argparse.Namespace, settings: Settings) -> None:
    emulator = Emulator(load_quota_table(settings.quota_file), answer_delay=args.delay)
    await emulator.start(args.host, args.port)
    print(f"IO Intelligence emulator at {emulator.base_url} (Ctrl-C stops it)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


async def _models(args: argparse.Namespace, settings: Settings) -> None:
    quotas = load_quota_table(settings.quota_file)
    print(to_plain(render_models(quotas)))


async def _agents(args: argparse.Namespace, settings: Settings) -> None:
    quotas = load_quota_table(settings.quota_file)
    async with AsyncExitStack() as stack:
        client = await app.open_client(settings, quotas, stack, emulator=args.emulator)
        print(to_plain(render_agents(await client.agents())))
