"""The start-up checks: what `iobot check` reports on its own and `iobot run` logs before it serves anyone.

Each check returns findings (an error or a warning, and a message fit to print) rather than raising, so
that `iobot check` can show every problem at once. No message holds a secret: variables are named, never
echoed, and URLs have their passwords masked.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dotenv import dotenv_values
from pydantic import AliasChoices

from core.errors import IOIntelligenceError
from core.ledger import LedgerError
from core.quotas import QuotaFileError, QuotaTable, load_quota_table
from core.settings import EnvSettings, Settings, SettingsError, load_settings, mask_passwords

from . import app

if TYPE_CHECKING:
    from core.client import IOClient, ModelInfo

# The variables of these prefixes belong to iobot: one it does not know is most likely a typo. Those of the
# test suite (IOBOT_TEST_POSTGRES_URL, set by `.ci/postgres start`) are not settings and need no warning.
OWN_PREFIXES = ("IOBOT_", "SLACK_", "DISCORD_")
TEST_PREFIX = "IOBOT_TEST_"
ENV_FILE = Path(".env")  # where `EnvSettings` reads it: the working directory


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def error(message: str) -> Finding:
    return Finding("error", mask_passwords(message))


def warning(message: str) -> Finding:
    return Finding("warning", mask_passwords(message))


def env_file_note() -> str:
    """Which `.env` the settings were read from, for the first line `iobot run` logs."""
    if ENV_FILE.is_file():
        return f"settings from the environment and {ENV_FILE.resolve()}"
    return f"settings from the environment only (no .env in {Path.cwd()})"


def settings_classes() -> list[type[EnvSettings]]:
    """The core's settings class and each chat platform's."""
    return [Settings, *(settings_class for settings_class, _ in app.platforms())]


def known_variables(classes: list[type[EnvSettings]]) -> set[str]:
    """Every variable name the settings classes read."""
    return {
        str(choice).upper()
        for settings_class in classes
        for info in settings_class.model_fields.values()
        if isinstance(info.validation_alias, AliasChoices)
        for choice in info.validation_alias.choices
    }


def unknown_variables(names: list[str], known: set[str]) -> list[Finding]:
    """A warning for each of iobot's variables that no setting reads, with the closest known name."""
    findings = []
    for name in sorted({name.upper() for name in names}):
        if not name.startswith(OWN_PREFIXES) or name.startswith(TEST_PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f": did you mean {close[0]}?" if close else ""
        findings.append(warning(f"{name} is not a setting iobot reads, so it has no effect{hint}"))
    return findings


def variable_findings(environ: Mapping[str, str] = os.environ) -> list[Finding]:
    """Unknown variables in the environment and in `.env` (names only: values may be secrets)."""
    names = list(environ)
    if ENV_FILE.is_file():
        names += list(dotenv_values(ENV_FILE))
    return unknown_variables(names, known_variables(settings_classes()))


def model_findings(
    settings: Settings, quotas: QuotaTable, api_models: Mapping[str, ModelInfo] | None, *, strict: bool
) -> list[Finding]:
    """The configured models against the quota table and, when known, the API's `/models`.

    A model missing from the table has no daily quota enforced: an error when `strict` (`iobot check`),
    a warning otherwise (`iobot run`), unless the API does not list it either, which no request survives.
    """
    findings = []
    configured = {
        settings.model: "IOBOT_MODEL",
        settings.vision_model: "IOBOT_VISION_MODEL",
        **{
            name: "IOBOT_FALLBACK_MODELS"
            for name in settings.fallback_models
            if name not in (settings.model, settings.vision_model)
        },
    }
    for name, variable in configured.items():
        if name in quotas:
            continue
        if api_models is not None and name not in api_models:
            findings.append(error(f"{variable}: model {name} is neither in the quota table nor among the API's models"))
        elif strict:
            findings.append(error(f"{variable}: model {name} is not in the quota table: its daily quota would not be enforced"))
        else:
            findings.append(warning(f"{variable}: model {name} is not in the quota table: its daily quota is not enforced"))
    findings += chat_model_findings(settings, quotas)
    row = quotas.get(settings.vision_model)
    api_row = api_models.get(settings.vision_model) if api_models is not None else None
    if (row is not None and not row.images) or (row is None and api_row is not None and api_row.supports_images is False):
        findings.append(error(f"IOBOT_VISION_MODEL: model {settings.vision_model} takes no images"))
    return findings


def chat_model_findings(settings: Settings, quotas: QuotaTable) -> list[Finding]:
    """`IOBOT_CHAT_MODELS`: each one a text model of the quota table, since picking one must respect its quota."""
    findings = []
    for name in settings.chat_models:
        row = quotas.get(name)
        if row is None:
            findings.append(error(f"IOBOT_CHAT_MODELS: model {name} is not in the quota table"))
        elif row.kind != "chat" or row.images:
            what = "an embedding model" if row.kind != "chat" else "a vision model"
            findings.append(error(f"IOBOT_CHAT_MODELS: model {name} is {what}, not a text chat model"))
    return findings


async def api_models(client: IOClient) -> dict[str, ModelInfo]:
    return {model.id: model for model in await client.models()}


async def run_findings(settings: Settings, quotas: QuotaTable, client: IOClient) -> list[Finding]:
    """The model checks of `iobot run`: the API is asked only when a model is missing from the quota table."""
    findings = []
    listed = None
    if any(name not in quotas for name in (settings.model, settings.vision_model, *settings.fallback_models)):
        try:
            listed = await api_models(client)
        except IOIntelligenceError as exc:
            findings.append(warning(f"the API's models could not be listed ({exc.user_message})"))
    return [*findings, *model_findings(settings, quotas, listed, strict=False)]


def missing_ledger(path: Path) -> Finding | None:
    """When there is no ledger at `path` yet: whether `iobot run` can create it (`check` creates nothing)."""
    if path.exists():
        return None
    directory = path.resolve().parent
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        return error(f"IOBOT_DATABASE_URL: no ledger at {path} and {directory} is not a writable directory")
    return warning(f"no ledger at {path} yet: iobot run creates it")


async def ledger_findings(settings: Settings) -> list[Finding]:
    """The ledger opens (beside a running service too), or can be created: a SQLite file, or a PostgreSQL
    database that answers (one with no iobot schema yet is created by `iobot run`, not here)."""
    postgres = settings.database_url.kind == "postgresql"
    if not postgres:
        missing = missing_ledger(Path(settings.database_path))
        if missing is not None:
            return [missing]
    try:
        async with AsyncExitStack() as stack:
            await app.open_ledger(settings, stack, owner=False, create=not postgres)
    except FileNotFoundError:
        return [warning(f"no iobot ledger in the PostgreSQL database {settings.database_url} yet: iobot run creates it")]
    except (LedgerError, OSError) as exc:
        return [error(str(exc) if postgres else f"IOBOT_DATABASE_URL: {exc}")]  # PostgreSQL's names the setting already
    return []


async def check(*, emulator: bool) -> list[Finding]:
    """Every start-up check, as `iobot check` runs them: settings, quota table, ledger, models."""
    findings = variable_findings()
    loaded = {}
    for settings_class in settings_classes():
        try:
            loaded[settings_class] = load_settings(settings_class)
        except SettingsError as exc:
            findings.append(error(str(exc)))
    settings = loaded.get(Settings)
    if not isinstance(settings, Settings):
        return findings
    try:
        quotas = load_quota_table(settings.quota_file)
    except QuotaFileError as exc:
        return [*findings, error(f"IOBOT_QUOTA_FILE: {exc}")]
    findings += await ledger_findings(settings)
    listed = None
    try:
        async with AsyncExitStack() as stack:
            client = await app.open_client(settings, quotas, stack, emulator=emulator)
            listed = await api_models(client)
    except SettingsError as exc:
        findings.append(error(str(exc)))
    except IOIntelligenceError as exc:
        findings.append(error(f"the API at {settings.base_url} did not list its models: {exc.user_message}"))
    return findings + model_findings(settings, quotas, listed, strict=True)
