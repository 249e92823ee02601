"""The core's settings, and what every settings class of iobot shares: read from the environment and
an optional `.env` file, errors that name the variable, secrets never echoed.

Each adapter declares its own settings class beside its code (a `PlatformSettings`). Only `bots/`
calls `load_settings()`; the rest of the code receives what it needs as arguments.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, overload
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_FALLBACK_MODELS = (
    "meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8,"
    "Qwen/Qwen3-235B-A22B-FP8,"
    "mistralai/Mistral-Large-Instruct-2411,"
    "Qwen/Qwen2-VL-7B-Instruct"
)

CommaList = Annotated[list[str], NoDecode]

# A person as the adapters write them: Slack's team and user ids, Discord's numeric user id, a login name.
PERSON_ID = re.compile(r"slack:[A-Z0-9]+:[A-Z0-9]+|discord:[0-9]+|console:\S+")
PERSON_ID_FORMS = "slack:<team>:<user> (slack:T123:U456), discord:<user id> (discord:123456789) or console:<login> (console:ana)"


# What `mask_passwords` hides: the password of `scheme://user:password@host`, taken up to the last @
# before a space, so that a password with a raw @, /, ? or # is hidden whole (a port followed later
# by an @, as in `http://h:80/users/@me`, is hidden too: better too much than a password), and a
# libpq-style `?password=` parameter.
URL_PASSWORD = re.compile(r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*:)\S*(?=@)")
QUERY_PASSWORD = re.compile(r"(?P<keep>[?&;]password=)[^&#\s]*", re.IGNORECASE)
MASK = "***"


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***, fit to print, log or answer with."""
    text = URL_PASSWORD.sub(rf"\g<keep>{MASK}", text)
    return QUERY_PASSWORD.sub(rf"\g<keep>{MASK}", text)


class DatabaseURL(SecretStr):
    """`IOBOT_DATABASE_URL`, a secret since a PostgreSQL URL may carry a password.

    `str()` and `repr()` show it with the password masked (a SQLite URL in full);
    `get_secret_value()` gives the whole URL, for the code that connects.
    """

    def _display(self) -> str:
        return mask_passwords(self.get_secret_value())

    @property
    def kind(self) -> str:
        """The database: `sqlite` or `postgresql`."""
        scheme = self.get_secret_value().partition(":")[0].lower()
        return "postgresql" if scheme in ("postgres", "postgresql") else scheme


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def env(name: str, **kwargs: Any) -> Any:
    """A field read from the environment variable `name` (case-insensitive)."""
    return Field(validation_alias=AliasChoices(name), **kwargs)


def split_commas(value: object) -> object:
    """A comma list from the environment as a list of its non-blank items (a `mode="before"` validator)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def http_url(value: str) -> str:
    """An API base URL: http(s), and no password in it (the HTTP clients would send it in place of the token)."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    if mask_passwords(value) != value:
        raise ValueError("must not carry a password: the API key or bot token is the credential")
    return value


class EnvSettings(BaseSettings):
    """Settings read from the environment and `.env`: the base of the core's and of each adapter's own.

    Each part of iobot declares the variables it reads beside its code; `load_settings` reads them.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=False)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """As pydantic shows them, with the password of a URL (a proxy's, say) masked."""
        for name, value in super().__repr_args__():
            yield name, mask_passwords(value) if isinstance(value, str) else value


class PlatformSettings(EnvSettings, ABC):
    """A chat platform's settings; the composition root starts its adapter when `enabled`."""

    @property
    @abstractmethod
    def enabled(self) -> bool:
        """True when the platform's credentials are set."""


class Settings(EnvSettings):
    """The core's settings: the API, the models, the ledger, the limits, the HTTP server and the logs."""

    api_key: SecretStr | None = env("IOINTELLIGENCE_API_KEY", default=None)
    base_url: str = env("IOINTELLIGENCE_BASE_URL", default="https://api.intelligence.io.solutions/api/v1")
    model: str = env("IOBOT_MODEL", default="meta-llama/Llama-3.3-70B-Instruct", min_length=1)
    vision_model: str = env("IOBOT_VISION_MODEL", default="meta-llama/Llama-3.2-90B-Vision-Instruct", min_length=1)
    fallback_models: CommaList = env("IOBOT_FALLBACK_MODELS", default=DEFAULT_FALLBACK_MODELS)
    # Empty: the text models of the quota table, which is read later (IOBOT_QUOTA_FILE); checked against it at start.
    chat_models: CommaList = env("IOBOT_CHAT_MODELS", default="")
    admins: CommaList = env("IOBOT_ADMINS", default="")
    database_url: DatabaseURL = env("IOBOT_DATABASE_URL", default=DatabaseURL("sqlite:///iobot.sqlite3"))
    user_daily_tokens: int = env("IOBOT_USER_DAILY_TOKENS", default=50_000, ge=0)
    quota_file: Path | None = env("IOBOT_QUOTA_FILE", default=None)
    max_tokens: int = env("IOBOT_MAX_TOKENS", default=1024, gt=0)
    # What the Translate shortcut and context menu translate into; a set value is checked as a language.
    default_language: str = env("IOBOT_DEFAULT_LANGUAGE", default="English", min_length=1, validate_default=False)
    api_timeout: float = env("IOBOT_API_TIMEOUT", default=60.0, gt=0)
    max_retries: int = env("IOBOT_MAX_RETRIES", default=3, ge=0, le=10)
    image_max_side: int = env("IOBOT_IMAGE_MAX_SIDE", default=2048, ge=64, le=4096)
    image_allow_loopback: bool = env("IOBOT_IMAGE_ALLOW_LOOPBACK", default=False)
    user_requests_per_minute: int = env("IOBOT_USER_REQUESTS_PER_MINUTE", default=20, ge=1)
    max_concurrent: int = env("IOBOT_MAX_CONCURRENT", default=64, ge=1)
    queue_timeout: float = env("IOBOT_QUEUE_TIMEOUT", default=60.0, gt=0)
    shutdown_grace: float = env("IOBOT_SHUTDOWN_GRACE", default=20.0, ge=0)
    log_format: Literal["text", "json"] = env("IOBOT_LOG_FORMAT", default="text")
    host: str = env("IOBOT_HOST", default="0.0.0.0")
    port: int = env("IOBOT_PORT", default=3000, ge=0, le=65535)
    log_level: str = env("IOBOT_LOG_LEVEL", default="INFO")
    # At least 16 characters: wrong guesses are throttled, but a short token falls to patience.
    admin_token: SecretStr | None = env("IOBOT_ADMIN_TOKEN", default=None, min_length=16)

    _split_commas = field_validator("fallback_models", "chat_models", "admins", mode="before")(split_commas)
    _http_url = field_validator("base_url")(http_url)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: DatabaseURL) -> DatabaseURL:
        url = value.get_secret_value()
        if value.kind == "postgresql":
            parts = urlsplit(url)
            if not parts.hostname or not parts.path.strip("/"):
                raise ValueError("a PostgreSQL URL names its host and database: postgresql://user:pass@host:port/db")
            return value
        if not url.startswith("sqlite:///"):
            raise ValueError("must be a sqlite:///path or a postgresql://user:pass@host:port/db URL")
        return value

    @field_validator("admins")
    @classmethod
    def _person_ids(cls, value: list[str]) -> list[str]:
        wrong = [item for item in value if not PERSON_ID.fullmatch(item)]
        if wrong:
            raise ValueError(f"not person ids: {', '.join(wrong)}; use {PERSON_ID_FORMS}")
        return value

    @field_validator("default_language")
    @classmethod
    def _language(cls, value: str) -> str:
        # The grammar's rule for a language, imported here: only a value that is set runs this (not the
        # default), so the admin commands start without loading the grammar.
        from .commands import UsageError, parse_language

        try:
            return parse_language(value)
        except UsageError as error:
            raise ValueError(error.problem) from None

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @property
    def database_path(self) -> str:
        """The SQLite ledger's file (a PostgreSQL URL has none: check `database_url.kind` first)."""
        if self.database_url.kind != "sqlite":
            raise ValueError("IOBOT_DATABASE_URL is not a SQLite file")
        return self.database_url.get_secret_value().removeprefix("sqlite:///")


AnySettings = TypeVar("AnySettings", bound=EnvSettings)


@overload
def load_settings(**overrides: Any) -> Settings: ...
@overload
def load_settings(settings_class: type[AnySettings], /, **overrides: Any) -> AnySettings: ...


def load_settings(settings_class: type[EnvSettings] = Settings, /, **overrides: Any) -> EnvSettings:
    """Settings (the core's, or those of `settings_class`) from the environment and `.env`; a clear
    `SettingsError` naming the variable otherwise.

    The error never holds a secret: secret variables are named, not echoed, and every URL in it has
    its password masked.
    """
    try:
        return settings_class(**overrides)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, settings_class)) from None


def _explain(exc: ValidationError, settings_class: type[EnvSettings]) -> str:
    problems = []
    for error in exc.errors():
        variable = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if not variable:
            problems.append(message)
        elif variable in _secret_variables(settings_class):
            problems.append(f"{variable}: {message}")  # never echo a secret
        else:
            problems.append(f"{variable}: {message} (got {error.get('input')!r})")
    return mask_passwords("invalid settings: " + "; ".join(problems))


def _secret_variables(settings_class: type[EnvSettings]) -> set[str]:
    return {
        str(info.validation_alias.choices[0])
        for info in settings_class.model_fields.values()
        if isinstance(info.validation_alias, AliasChoices) and "SecretStr" in str(info.annotation)
    }
