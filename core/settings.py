"""Every setting of iobot, read from the environment and an optional `.env` file.

Only `bots/` calls `load_settings()`; the rest of the code receives what it needs as arguments.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_FALLBACK_MODELS = (
    "meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8,"
    "Qwen/Qwen3-235B-A22B-FP8,"
    "mistralai/Mistral-Large-Instruct-2411,"
    "Qwen/Qwen2-VL-7B-Instruct"
)

CommaList = Annotated[list[str], NoDecode]
IdList = Annotated[list[int], NoDecode]  # a comma list of Discord ids (snowflakes)


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


def _env(name: str, **kwargs):
    """A field read from the environment variable `name` (case-insensitive)."""
    return Field(validation_alias=AliasChoices(name), **kwargs)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=False)

    api_key: SecretStr | None = _env("IOINTELLIGENCE_API_KEY", default=None)
    base_url: str = _env("IOINTELLIGENCE_BASE_URL", default="https://api.intelligence.io.solutions/api/v1")
    model: str = _env("IOBOT_MODEL", default="meta-llama/Llama-3.3-70B-Instruct", min_length=1)
    vision_model: str = _env("IOBOT_VISION_MODEL", default="meta-llama/Llama-3.2-90B-Vision-Instruct", min_length=1)
    fallback_models: CommaList = _env("IOBOT_FALLBACK_MODELS", default=DEFAULT_FALLBACK_MODELS)
    database_url: DatabaseURL = _env("IOBOT_DATABASE_URL", default=DatabaseURL("sqlite:///iobot.sqlite3"))
    user_daily_tokens: int = _env("IOBOT_USER_DAILY_TOKENS", default=50_000, ge=0)
    quota_file: Path | None = _env("IOBOT_QUOTA_FILE", default=None)
    max_tokens: int = _env("IOBOT_MAX_TOKENS", default=1024, gt=0)
    api_timeout: float = _env("IOBOT_API_TIMEOUT", default=60.0, gt=0)
    max_retries: int = _env("IOBOT_MAX_RETRIES", default=3, ge=0, le=10)
    image_max_side: int = _env("IOBOT_IMAGE_MAX_SIDE", default=2048, ge=64, le=4096)
    image_allow_loopback: bool = _env("IOBOT_IMAGE_ALLOW_LOOPBACK", default=False)
    user_requests_per_minute: int = _env("IOBOT_USER_REQUESTS_PER_MINUTE", default=20, ge=1)
    max_concurrent: int = _env("IOBOT_MAX_CONCURRENT", default=64, ge=1)
    queue_timeout: float = _env("IOBOT_QUEUE_TIMEOUT", default=60.0, gt=0)
    shutdown_grace: float = _env("IOBOT_SHUTDOWN_GRACE", default=20.0, ge=0)
    log_format: Literal["text", "json"] = _env("IOBOT_LOG_FORMAT", default="text")
    host: str = _env("IOBOT_HOST", default="0.0.0.0")
    port: int = _env("IOBOT_PORT", default=3000, ge=0, le=65535)
    log_level: str = _env("IOBOT_LOG_LEVEL", default="INFO")

    slack_bot_token: SecretStr | None = _env("SLACK_BOT_TOKEN", default=None)
    slack_signing_secret: SecretStr | None = _env("SLACK_SIGNING_SECRET", default=None)
    slack_app_token: SecretStr | None = _env("SLACK_APP_TOKEN", default=None)
    slack_api_url: str = _env("SLACK_API_URL", default="https://slack.com/api/")
    slack_file_hosts: CommaList = _env("SLACK_FILE_HOSTS", default="files.slack.com")

    discord_bot_token: SecretStr | None = _env("DISCORD_BOT_TOKEN", default=None)
    discord_api_url: str = _env("DISCORD_API_URL", default="https://discord.com/api/v10")
    discord_gateway_url: str = _env("DISCORD_GATEWAY_URL", default="wss://gateway.discord.gg/")
    # Who may use the Discord bot: empty allow-lists mean everyone, a block always wins.
    discord_allowed_guilds: IdList = _env("DISCORD_ALLOWED_GUILDS", default="")
    discord_blocked_guilds: IdList = _env("DISCORD_BLOCKED_GUILDS", default="")
    discord_allowed_channels: IdList = _env("DISCORD_ALLOWED_CHANNELS", default="")
    discord_blocked_channels: IdList = _env("DISCORD_BLOCKED_CHANNELS", default="")
    discord_allowed_roles: IdList = _env("DISCORD_ALLOWED_ROLES", default="")
    discord_blocked_roles: IdList = _env("DISCORD_BLOCKED_ROLES", default="")
    discord_allowed_users: IdList = _env("DISCORD_ALLOWED_USERS", default="")
    discord_blocked_users: IdList = _env("DISCORD_BLOCKED_USERS", default="")
    discord_allow_dms: bool = _env("DISCORD_ALLOW_DMS", default=True)

    @field_validator("fallback_models", "slack_file_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator(
        "discord_allowed_guilds", "discord_blocked_guilds", "discord_allowed_channels", "discord_blocked_channels",
        "discord_allowed_roles", "discord_blocked_roles", "discord_allowed_users", "discord_blocked_users",
        mode="before",
    )
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        items = [item.strip() for item in value.split(",") if item.strip()]
        wrong = [item for item in items if not (item.isascii() and item.isdigit())]
        if wrong:
            raise ValueError(f"must be a comma list of numeric Discord ids; not ids: {', '.join(wrong)}")
        return [int(item) for item in items]

    @field_validator("base_url", "slack_api_url", "discord_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if mask_passwords(value) != value:  # the HTTP clients would send it in place of the token
            raise ValueError("must not carry a password: the API key or bot token is the credential")
        return value

    @field_validator("discord_gateway_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @field_validator("database_url")
    @classmethod
    def _sqlite_url(cls, value: DatabaseURL) -> DatabaseURL:
        if value.kind == "postgresql":
            raise ValueError("PostgreSQL is not supported yet: use a sqlite:///path URL")
        if not value.get_secret_value().startswith("sqlite:///"):
            raise ValueError("must be a sqlite:///path URL")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @model_validator(mode="after")
    def _slack_pairs(self) -> Settings:
        if self.slack_bot_token and not (self.slack_signing_secret or self.slack_app_token):
            raise ValueError("SLACK_BOT_TOKEN is set but neither SLACK_SIGNING_SECRET nor SLACK_APP_TOKEN is")
        if (self.slack_signing_secret or self.slack_app_token) and not self.slack_bot_token:
            raise ValueError("SLACK_BOT_TOKEN is required when SLACK_SIGNING_SECRET or SLACK_APP_TOKEN is set")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """As pydantic shows them, with the password of a URL (a proxy's, say) masked."""
        for name, value in super().__repr_args__():
            yield name, mask_passwords(value) if isinstance(value, str) else value

    @property
    def database_path(self) -> str:
        return self.database_url.get_secret_value().removeprefix("sqlite:///")

    @property
    def slack_enabled(self) -> bool:
        return self.slack_bot_token is not None

    @property
    def discord_enabled(self) -> bool:
        return self.discord_bot_token is not None


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and `.env`; a clear `SettingsError` naming the variable otherwise.

    The error never holds a secret: secret variables are named, not echoed, and every URL in it has
    its password masked.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        variable = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if not variable:
            problems.append(message)
        elif variable in _secret_variables():
            problems.append(f"{variable}: {message}")  # never echo a secret
        else:
            problems.append(f"{variable}: {message} (got {error.get('input')!r})")
    return mask_passwords("invalid settings: " + "; ".join(problems))


def _secret_variables() -> set[str]:
    return {
        str(info.validation_alias.choices[0])
        for info in Settings.model_fields.values()
        if isinstance(info.validation_alias, AliasChoices) and "SecretStr" in str(info.annotation)
    }
