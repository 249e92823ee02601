"""Settings: defaults, .env, comma lists, and errors that name the variable without echoing secrets."""

from __future__ import annotations

import pytest

from adapters.discord import DiscordSettings
from adapters.slack import SlackSettings
from core.settings import EnvSettings, SettingsError, load_settings

VARIABLES = (
    "IOINTELLIGENCE_API_KEY IOINTELLIGENCE_BASE_URL IOBOT_MODEL IOBOT_VISION_MODEL IOBOT_FALLBACK_MODELS "
    "IOBOT_DATABASE_URL IOBOT_USER_DAILY_TOKENS IOBOT_QUOTA_FILE IOBOT_HOST IOBOT_PORT SLACK_BOT_TOKEN "
    "SLACK_SIGNING_SECRET SLACK_APP_TOKEN SLACK_API_URL SLACK_FILE_HOSTS DISCORD_BOT_TOKEN DISCORD_API_URL "
    "DISCORD_GATEWAY_URL"
).split()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def load_every_settings() -> list[EnvSettings]:
    """The core's settings and every adapter's, as `iobot run` reads them."""
    return [load_settings(), load_settings(SlackSettings), load_settings(DiscordSettings)]


def test_defaults_match_the_design():
    settings = load_settings()
    assert settings.api_key is None
    assert settings.base_url == "https://api.intelligence.io.solutions/api/v1"
    assert settings.model == "meta-llama/Llama-3.3-70B-Instruct"
    assert settings.vision_model == "meta-llama/Llama-3.2-90B-Vision-Instruct"
    assert len(settings.fallback_models) >= 2
    assert settings.database_url.get_secret_value() == "sqlite:///iobot.sqlite3" and settings.database_path == "iobot.sqlite3"
    assert settings.user_daily_tokens == 50_000
    assert (settings.host, settings.port) == ("0.0.0.0", 3000)
    slack, discord = load_settings(SlackSettings), load_settings(DiscordSettings)
    assert slack.api_url == "https://slack.com/api/" and slack.file_hosts == ["files.slack.com"]
    assert discord.api_url == "https://discord.com/api/v10" and discord.gateway_url == "wss://gateway.discord.gg/"
    assert not slack.enabled and not discord.enabled


def test_environment_and_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("IOINTELLIGENCE_API_KEY=io-v2-from-dotenv\nIOBOT_PORT=4000\nDISCORD_ALLOWED_USERS=7,8\n")
    monkeypatch.setenv("IOBOT_PORT", "5000")  # the environment wins over .env
    monkeypatch.setenv("IOBOT_FALLBACK_MODELS", " a/b , c/d,, ")
    monkeypatch.setenv("SLACK_FILE_HOSTS", "files.slack.com,127.0.0.1")
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9000/api")
    settings = load_settings()
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "io-v2-from-dotenv"
    assert settings.port == 5000
    assert settings.fallback_models == ["a/b", "c/d"]
    slack = load_settings(SlackSettings)
    assert slack.file_hosts == ["files.slack.com", "127.0.0.1"]
    assert slack.api_url == "http://127.0.0.1:9000/api/"
    assert load_settings(DiscordSettings).allowed_users == [7, 8], "an adapter's settings come from .env too"


def test_secrets_are_hidden_in_repr(monkeypatch):
    monkeypatch.setenv("IOINTELLIGENCE_API_KEY", "io-v2-supersecret")
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "discord-supersecret")
    for settings in load_every_settings():
        assert "supersecret" not in repr(settings) and "supersecret" not in str(settings)
    assert load_settings(DiscordSettings).enabled


@pytest.mark.parametrize(
    ("name", "value", "mentions"),
    [
        ("IOBOT_PORT", "abc", "IOBOT_PORT"),
        ("IOBOT_PORT", "70000", "IOBOT_PORT"),
        ("IOBOT_USER_DAILY_TOKENS", "-1", "IOBOT_USER_DAILY_TOKENS"),
        ("IOINTELLIGENCE_BASE_URL", "ftp://x", "IOINTELLIGENCE_BASE_URL"),
        ("IOBOT_DATABASE_URL", "postgres://x", "IOBOT_DATABASE_URL"),
        ("DISCORD_GATEWAY_URL", "http://x", "DISCORD_GATEWAY_URL"),
        ("SLACK_BOT_TOKEN", "xoxb-1", "SLACK_SIGNING_SECRET"),
        ("SLACK_SIGNING_SECRET", "s3cr3t-value", "SLACK_BOT_TOKEN"),
        ("IOINTELLIGENCE_BASE_URL", "https://bob:pa55word@proxy.internal/api/v1", "bob:***@proxy.internal"),
        ("SLACK_API_URL", "https://bob:pa55word@proxy.internal/api/", "SLACK_API_URL: must not carry a password"),
        ("DISCORD_API_URL", "https://proxy.internal/api/v10?password=pa55word", "DISCORD_API_URL"),
    ],
)
def test_malformed_or_missing_settings_name_the_variable(monkeypatch, name, value, mentions):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_every_settings()
    assert mentions in str(caught.value)
    if name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"):
        assert value not in str(caught.value)
    assert "pa55word" not in str(caught.value)
