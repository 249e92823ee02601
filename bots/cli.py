"""`iobot`: the command line. Subcommands: run, check, emulator, usage, limits, models, agents.

The emulator is imported by the one command that serves it alone, `core.render` by the commands that show
models and agents, and `bots.app` loads the heavy parts (aiohttp, the chat platforms' libraries) only when
they are built, so `iobot usage` and `iobot limits` answer quickly. Their tables of many rows are written by
the ledger (core/ledger/usage_table.py) and printed in one write.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime
from typing import Any

from core.adapter import AdapterError
from core.errors import IOIntelligenceError
from core.ledger import LedgerError, LedgerWithStore
from core.ledger.usage_table import COLUMN_INDEXES, COLUMNS
from core.quotas import QuotaFileError, QuotaTable, load_quota_table
from core.settings import PERSON_ID, PERSON_ID_FORMS, Settings, SettingsError, load_settings, mask_passwords

from . import app
from .logs import configure_logging
from .output import Column, draw_table, drawn, print_json, print_table


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit code. Errors are printed (with any URL's password masked), not raised."""
    args = _parser().parse_args(argv)
    try:
        if args.handler is _check:  # before the settings load: invalid settings are among its findings
            return _check(args)
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        return asyncio.run(args.handler(args, settings)) or 0
    except (SettingsError, AdapterError, QuotaFileError, LedgerError, OSError) as exc:
        print(mask_passwords(f"iobot: {exc}"), file=sys.stderr)
        return 2
    except IOIntelligenceError as exc:
        print(mask_passwords(f"iobot: {exc.user_message} ({exc})"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: its traceback goes through the log, which masks passwords
        logging.getLogger("iobot").exception("iobot stopped on an unexpected error")
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iobot", description="Slack and Discord bots for the IO Intelligence API.")
    commands = parser.add_subparsers(required=True, metavar="command")

    run = commands.add_parser("run", help="run the bots (the terminal chat when no platform is configured)")
    run.add_argument("--emulator", action="store_true", help="serve the API from the built-in emulator")
    run.set_defaults(handler=_run)

    check = commands.add_parser("check", help="the start-up checks alone: settings, models, ledger (exit 1 on an error)")
    check.add_argument("--emulator", action="store_true", help="ask the built-in emulator for its models")
    check.add_argument("--json", action="store_true", help="one JSON array of findings {level, message}, for scripts")
    check.set_defaults(handler=_check)

    emulator = commands.add_parser("emulator", help="serve the built-in API emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8000)
    emulator.add_argument("--delay", type=float, default=0.0, help="seconds every answer takes")
    emulator.set_defaults(handler=_emulator)

    usage = commands.add_parser("usage", help="who used what, against which limit")
    usage.add_argument("--day", type=date.fromisoformat, help="a UTC day, YYYY-MM-DD (default: today in UTC)")
    usage.add_argument("--user", type=_person, help="one person, e.g. slack:T123:U456, discord:123, console:ana")
    usage.add_argument("--json", action="store_true", help="one JSON array of rows, for scripts")
    usage.set_defaults(handler=_usage)

    limits = commands.add_parser("limits", help="set, clear or list per-person daily budgets")
    limits.add_argument("user", nargs="?", type=_person, help="the person (without it: list every override; alone: show theirs)")
    limits.add_argument("tokens", nargs="?", type=int, help="their daily budget in tokens")
    limits.add_argument("--clear", action="store_true", help="go back to IOBOT_USER_DAILY_TOKENS")
    limits.add_argument("--json", action="store_true", help="the budgets as JSON, for scripts")
    limits.set_defaults(handler=_limits)

    models = commands.add_parser("models", help="the per-model daily quota table, with today's use (UTC)")
    models.add_argument("--json", action="store_true", help="one JSON array of models, for scripts")
    models.set_defaults(handler=_models)

    agents = commands.add_parser("agents", help="the API's predefined agents")
    agents.add_argument("--emulator", action="store_true", help="ask the built-in emulator")
    agents.set_defaults(handler=_agents)
    return parser


def _person(text: str) -> str:
    """An argparse type: a mistyped person would silently match no row, or get a budget no one uses."""
    if not PERSON_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a person id: use {PERSON_ID_FORMS}")
    return text


async def _open_ledger(settings: Settings, stack: AsyncExitStack) -> LedgerWithStore | None:
    """The service's ledger, opened beside it to read and set budgets; None when there is no file (or no
    iobot schema in the PostgreSQL database).

    Never created here: an empty ledger at a mistyped path would show no use and keep budgets the
    service never reads.
    """
    try:
        return await app.open_ledger(settings, stack, owner=False, create=False)
    except FileNotFoundError:
        return None


def _no_ledger(settings: Settings) -> LedgerError:
    if settings.database_url.kind == "postgresql":
        return LedgerError(
            f"there is no iobot ledger in the PostgreSQL database {settings.database_url}: set IOBOT_DATABASE_URL "
            "to the database `iobot run` uses (nothing was created)"
        )
    return LedgerError(
        f"there is no ledger at {os.path.abspath(settings.database_path)}: set IOBOT_DATABASE_URL to the "
        "sqlite:///path of the file `iobot run` keeps (nothing was created)"
    )


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    return await app.run(settings, emulator=args.emulator)


def _check(args: argparse.Namespace) -> int:
    from .checks import check

    findings = asyncio.run(check(emulator=args.emulator))
    errors = sum(finding.level == "error" for finding in findings)
    if args.json:
        print_json([{"level": finding.level, "message": finding.message} for finding in findings])
    else:
        for finding in findings:
            print(finding)
        print(f"{errors} error(s), {len(findings) - errors} warning(s)")
    return 1 if errors else 0


async def _emulator(args: argparse.Namespace, settings: Settings) -> None:
    from emulator import Emulator

    emulator = Emulator(load_quota_table(settings.quota_file), answer_delay=args.delay)
    await emulator.start(args.host, args.port)
    print(f"IO Intelligence emulator at {emulator.base_url} (Ctrl-C stops it)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


async def _usage(args: argparse.Namespace, settings: Settings) -> None:
    day = args.day or datetime.now(UTC).date()  # the ledger counts UTC days
    async with AsyncExitStack() as stack:
        ledger = await _open_ledger(settings, stack)
        if ledger is None:
            raise _no_ledger(settings)
        if args.json:
            objects = await ledger.usage_json(day=day, user=args.user)
            sys.stdout.writelines(["[", ",\n".join(objects), "]\n"])  # not one string: that would copy the rows twice more
            return
        table = await ledger.usage_table(day=day, user=args.user)
        if not table.lines:
            print(f"No usage recorded on {day.isoformat()} (UTC).")
            return
        if drawn(len(table.lines)):  # a few rows on a terminal: drawn, from their values
            rows = await ledger.usage_with_budgets(day=day, user=args.user)
            cells = [
                [f"{row[index]:,}" if column.numeric else str(row[index]) for column, index in zip(COLUMNS, COLUMN_INDEXES)]
                for row in rows
            ]
            draw_table(
                f"Usage on {day.isoformat()} (UTC days)", [Column(column.header, column.numeric) for column in COLUMNS], cells
            )
        else:
            print("\n".join([table.header, *table.lines]))
    if table.interrupted_requests:
        print(
            f"interrupted: {table.interrupted_requests:,} call(s) cut off when iobot stopped without finishing them; their "
            "estimate counts against the model's daily quota, not the person's budget."
        )


async def _limits(args: argparse.Namespace, settings: Settings) -> int:
    async with AsyncExitStack() as stack:
        ledger = await _open_ledger(settings, stack)
        if ledger is None:
            raise _no_ledger(settings)
        if args.user is None:
            _print_limits(settings.user_daily_tokens, await ledger.user_limits(), as_json=args.json)
            return 0
        if args.clear and args.tokens is not None:
            print("iobot: give either a number of tokens or --clear, not both", file=sys.stderr)
            return 2
        if args.tokens is not None and args.tokens < 0:
            print("iobot: a budget cannot be negative", file=sys.stderr)
            return 2
        if args.clear or args.tokens is not None:
            await ledger.set_user_limit(args.user, None if args.clear else args.tokens)
        tokens = await ledger.user_limit(args.user)
    if args.json:
        print_json({"user": args.user, "daily_tokens": tokens})
    else:
        print(f"{args.user}: {tokens:,} tokens a day")
    return 0


def _print_limits(default: int, overrides: dict[str, int], *, as_json: bool) -> None:
    """The default daily budget, then each person's own."""
    if as_json:
        print_json(
            {
                "default_daily_tokens": default,
                "overrides": [{"user": user, "daily_tokens": tokens} for user, tokens in overrides.items()],
            }
        )
        return
    print(f"Default daily budget: {default:,} tokens (IOBOT_USER_DAILY_TOKENS).")
    if overrides and drawn(len(overrides)):
        draw_table(
            None,
            [Column("user"), Column("tokens/day", numeric=True)],
            [[user, f"{tokens:,}"] for user, tokens in overrides.items()],
        )
    elif overrides:  # one write for them all: there may be thousands
        print("\n".join(f"{user}: {tokens:,}" for user, tokens in overrides.items()))


async def _models(args: argparse.Namespace, settings: Settings) -> None:
    quotas = load_quota_table(settings.quota_file)
    day = datetime.now(UTC).date()  # the ledger counts UTC days
    async with AsyncExitStack() as stack:
        ledger = await _open_ledger(settings, stack)
        used = {} if ledger is None else await ledger.model_totals(day)  # no ledger yet: nothing used
    models = _model_rows(quotas, used)
    if args.json:
        print_json([{"day": day.isoformat(), **model} for model in models])
        return
    columns = [Column(header, numeric) for header, numeric in MODELS_TABLE]
    print_table(
        f"Models on {day.isoformat()} (UTC; quotas reset at 00:00 UTC)", columns, [_model_cells(model) for model in models]
    )


# `iobot models`' columns: header, and whether it is a number.
MODELS_TABLE = (
    ("model", False),
    ("API tokens/day", True),
    ("used today", True),
    ("left", True),
    ("context", True),
    ("images", False),
)


def _model_rows(quotas: QuotaTable, used: dict[str, int]) -> list[dict[str, Any]]:
    """Each chat model's daily quota, what was used (or is reserved) of it today and what is left; None where the table has no number."""
    rows = []
    for row in quotas.chat_models():
        spent, limit = used.get(row.name, 0), row.api_daily_tokens
        rows.append(
            {
                "model": row.name,
                "api_daily_tokens": limit,
                "used_tokens": spent,
                "left_tokens": None if limit is None else max(0, limit - spent),
                "context_length": row.context_length,
                "images": row.images,
            }
        )
    return rows


def _model_cells(model: dict[str, Any]) -> list[str]:
    from core.render import short_model_name

    def number(value: int | None) -> str:
        return "n/a" if value is None else f"{value:,}"

    return [
        short_model_name(model["model"]),
        number(model["api_daily_tokens"]),
        number(model["used_tokens"]),
        number(model["left_tokens"]),
        number(model["context_length"]),
        "yes" if model["images"] else "",
    ]


async def _agents(args: argparse.Namespace, settings: Settings) -> None:
    from core.render import render_agents, to_plain

    quotas = load_quota_table(settings.quota_file)
    async with AsyncExitStack() as stack:
        client = await app.open_client(settings, quotas, stack, emulator=args.emulator)
        print(to_plain(render_agents(await client.agents())))
