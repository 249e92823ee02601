"""A password inside a URL (IOBOT_DATABASE_URL above all) never reaches stdout, stderr, a log line or an HTTP body."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import TypeAdapter

from adapters.discord import DiscordSettings
from bots.http import HealthState, make_http_app
from bots.logs import configure_logging
from core.quotas import load_quota_table
from core.settings import DatabaseURL, SettingsError, load_settings, mask_passwords

PASSWORD = "s3cretpw-4f1c"
DATABASE_URL = f"postgresql://bob:{PASSWORD}@db.internal:5432/iobot"
IOBOT = [sys.executable, "-c", "import sys; from bots.cli import main; sys.exit(main())"]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (DATABASE_URL, "postgresql://bob:***@db.internal:5432/iobot"),
        (f"got '{DATABASE_URL}'", "got 'postgresql://bob:***@db.internal:5432/iobot'"),
        (f"postgres://:{PASSWORD}@db", "postgres://:***@db"),
        (f"postgresql://bob:{PASSWORD}@db", "postgresql://bob:***@db"),
        ("postgresql://bob:p@ss/w#o?rd@db/x", "postgresql://bob:***@db/x"),  # raw @ / # ? in a password
        (
            f"postgresql://db/x?user=bob&password={PASSWORD}&sslmode=require",
            "postgresql://db/x?user=bob&password=***&sslmode=require",
        ),
        (
            f'{{"a": "http://u:{PASSWORD}@proxy", "b": "https://v:{PASSWORD}@h/x"}}',
            '{"a": "http://u:***@proxy", "b": "https://v:***@h/x"}',
        ),
        ("postgresql://bob@db/x and sqlite:///data/iobot.sqlite3", "postgresql://bob@db/x and sqlite:///data/iobot.sqlite3"),
        ("https://discord.com/api/v10/users/@me", "https://discord.com/api/v10/users/@me"),
    ],
)
def test_mask_passwords(text, masked):
    assert mask_passwords(text) == masked


def test_the_database_url_is_a_secret_in_the_settings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IOBOT_DATABASE_URL", "sqlite:///data/ledger.sqlite3")
    monkeypatch.setenv("DISCORD_GATEWAY_URL", f"wss://bob:{PASSWORD}@proxy.internal/")
    settings, discord = load_settings(), load_settings(DiscordSettings)
    assert settings.database_path == "data/ledger.sqlite3" and settings.database_url.kind == "sqlite"
    assert str(settings.database_url) == "sqlite:///data/ledger.sqlite3", "a URL without a password shows whole"
    url = DatabaseURL(DATABASE_URL)
    assert url.get_secret_value() == DATABASE_URL and url.kind == "postgresql"
    shown = [
        str(url),
        repr(url),
        f"{url}",
        TypeAdapter(DatabaseURL).dump_json(url).decode(),
        repr(settings),
        str(settings),
        repr(discord),
        str(discord),
    ]
    assert all(PASSWORD not in text for text in shown)
    assert "bob:***@db.internal" in str(url) and "bob:***@proxy.internal" in repr(discord)


def test_a_postgresql_url_is_taken_and_one_without_a_database_refused_with_its_password_masked(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IOBOT_DATABASE_URL", DATABASE_URL)
    settings = load_settings()
    assert settings.database_url.kind == "postgresql" and PASSWORD not in repr(settings)
    monkeypatch.setenv("IOBOT_DATABASE_URL", f"postgres://bob:{PASSWORD}@db.internal:5432")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "IOBOT_DATABASE_URL: a PostgreSQL URL names its host and database" in str(caught.value)
    assert "postgres://bob:***@db.internal:5432" in str(caught.value) and PASSWORD not in str(caught.value)


def environment(workdir: Path, **extra: str) -> dict:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("IOBOT_", "IOINTELLIGENCE_", "SLACK_", "DISCORD_"))
    }
    return {**env, "IOBOT_HOST": "127.0.0.1", "IOBOT_PORT": "0", "IOBOT_LOG_LEVEL": "DEBUG", **extra}


def test_no_command_prints_the_password_of_a_database_url(tmp_path):
    """Every subcommand that opens the ledger, the URL from the environment or from .env, the database
    unreachable: exit 2, the variable named, no password. `agents` never opens it, and succeeds."""
    commands = [["run"], ["run", "--emulator"], ["usage"], ["usage", "--json"], ["limits"], ["models"], ["agents", "--emulator"]]
    runs = []
    for index, command in enumerate(commands):
        workdir = tmp_path / str(index)
        workdir.mkdir()
        env = environment(workdir, IOBOT_DATABASE_URL=DATABASE_URL)
        if index % 2:  # every other one reads it from .env
            (workdir / ".env").write_text(f"IOBOT_DATABASE_URL={env.pop('IOBOT_DATABASE_URL')}\n")
        process = subprocess.Popen(
            [*IOBOT, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=workdir,
            env=env,
        )
        runs.append((command, process))
    for command, process in runs:
        stdout, stderr = process.communicate(timeout=60)
        assert PASSWORD not in stdout + stderr, command
        if command[0] == "agents":
            assert process.returncode == 0, (command, stderr)
            continue
        assert process.returncode == 2, (command, stderr)
        assert "IOBOT_DATABASE_URL" in stderr and "bob:***@db.internal" in stderr, (command, stderr)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    undo: list = []  # what a test changed on other loggers, undone after it
    yield undo
    for step in undo:
        step()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_at_every_level_mask_url_passwords(log_format, capsys, restore_logging):
    configure_logging("DEBUG", log_format)
    for name in ("iobot", "iobot.ledger", "slack_sdk.web.async_base_client", "discord.http"):
        logger = logging.getLogger(name)
        previous = logger.level
        logger.setLevel(logging.NOTSET)  # earlier tests may have quietened a library's logger
        restore_logging.append(lambda logger=logger, previous=previous: logger.setLevel(previous))
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
            logging.getLogger(name).log(level, "connecting to %s", DATABASE_URL)
    try:
        raise ConnectionError(f"could not connect to {DATABASE_URL}")
    except ConnectionError:
        logging.getLogger("iobot").exception("the ledger is unreachable at %r", DatabaseURL(DATABASE_URL).get_secret_value())
    logged = capsys.readouterr().err
    assert logged.count("bob:***@db.internal") == 4 * 5 + 2
    assert "Traceback" in logged and "CRITICAL" in logged and "DEBUG" in logged
    assert PASSWORD not in logged
    if log_format == "json":
        assert all(json.loads(line)["message"] for line in logged.splitlines())


class FailingLedger:
    kind = "postgresql"

    async def ping(self) -> None:
        raise ConnectionError(f"could not connect to {DATABASE_URL}")


class FailingClient:
    last_error = (time.time(), f"APIConnectionError: proxy https://bob:{PASSWORD}@proxy.internal refused")


async def test_healthz_shows_no_password_when_the_ledger_and_the_api_fail():
    app = make_http_app(HealthState(FailingLedger(), FailingClient(), load_quota_table()))  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        response = await http.get("/healthz")
        body = await response.text()
    assert response.status == 503
    assert json.loads(body)["ledger"] == "unreachable: ConnectionError"
    assert json.loads(body)["database"] == {"kind": "postgresql", "ok": False}
    assert "https://bob:***@proxy.internal" in body and PASSWORD not in body
