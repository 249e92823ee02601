"""The start-up checks: their findings one by one, and `iobot check` and `iobot run` as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

from bots import checks
from bots.checks import Finding
from core.client import IOClient, ModelInfo
from core.errors import IOIntelligenceError
from core.ledger import SQLiteLedger
from core.quotas import load_quota_table
from core.settings import Settings, load_settings

from .processes import clean_environment

IOBOT = [sys.executable, "-c", "import sys; from bots.cli import main; sys.exit(main())"]
SECRET = "xoxb-check-secret-4d2f9a"  # would be spotted if a value were echoed
QUOTAS = load_quota_table()
TEXT_MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"


def iobot(workdir: Path, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*IOBOT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=workdir,
        env=clean_environment(workdir, **env),
    )


def settings(**overrides: object) -> Settings:
    return load_settings(**{"IOBOT_FALLBACK_MODELS": "", **overrides})


def levels(findings: list[Finding]) -> list[str]:
    return [finding.level for finding in findings]


# Unknown variables


def test_an_unknown_variable_is_a_warning_naming_the_closest_known_one() -> None:
    known = checks.known_variables(checks.settings_classes())
    findings = checks.unknown_variables(["IOBOT_MODLE", "SLACK_BOT_TOKN", "DISCORD_BOT_TOKEN", "IOBOT_PORT", "PATH"], known)
    assert levels(findings) == ["warning", "warning"]
    assert "IOBOT_MODLE" in findings[0].message and "did you mean IOBOT_MODEL?" in findings[0].message
    assert "did you mean SLACK_BOT_TOKEN?" in findings[1].message


def test_the_known_variables_are_the_core_and_every_platform_settings() -> None:
    known = checks.known_variables(checks.settings_classes())
    assert {"IOBOT_MODEL", "IOINTELLIGENCE_API_KEY", "SLACK_SIGNING_SECRET", "DISCORD_ALLOWED_USERS"} <= known


def test_an_unknown_variable_far_from_every_known_one_gets_no_suggestion() -> None:
    [finding] = checks.unknown_variables(["DISCORD_ZZZZZZZZZZZZZZZZZZZZ"], {"IOBOT_MODEL"})
    assert "did you mean" not in finding.message


def test_unknown_variables_come_from_dotenv_too_and_values_are_never_shown(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"SLACK_SIGNING_SECRT={SECRET}\n")
    findings = checks.variable_findings({"IOBOT_PROT": SECRET})
    messages = " ".join(finding.message for finding in findings)
    assert "did you mean SLACK_SIGNING_SECRET?" in messages and "did you mean IOBOT_PORT?" in messages
    assert SECRET not in messages


def test_the_env_file_note_names_the_file_or_says_there_is_none(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "no .env" in checks.env_file_note()
    (tmp_path / ".env").write_text("IOBOT_PORT=4000\n")
    assert str(tmp_path / ".env") in checks.env_file_note()


# Models


def test_configured_models_in_the_quota_table_give_no_finding() -> None:
    assert checks.model_findings(settings(), QUOTAS, None, strict=True) == []


def test_a_model_missing_from_the_quota_table_is_an_error_in_check_and_a_warning_in_run() -> None:
    configured = settings(IOBOT_MODEL="acme/new-model")
    listed = {"acme/new-model": ModelInfo("acme/new-model", None, False)}
    [strict] = checks.model_findings(configured, QUOTAS, listed, strict=True)
    [relaxed] = checks.model_findings(configured, QUOTAS, listed, strict=False)
    assert strict.level == "error" and "IOBOT_MODEL" in strict.message and "acme/new-model" in strict.message
    assert relaxed.level == "warning" and "not in the quota table" in relaxed.message


def test_a_model_unknown_to_the_quota_table_and_the_api_is_an_error_in_run_too() -> None:
    configured = settings(IOBOT_FALLBACK_MODELS="acme/typo")
    [finding] = checks.model_findings(configured, QUOTAS, {}, strict=False)
    assert finding.level == "error" and "IOBOT_FALLBACK_MODELS" in finding.message


def test_a_vision_model_the_quota_table_says_takes_no_images_is_an_error() -> None:
    [finding] = checks.model_findings(settings(IOBOT_VISION_MODEL=TEXT_MODEL), QUOTAS, None, strict=False)
    assert finding.level == "error" and "IOBOT_VISION_MODEL" in finding.message and "takes no images" in finding.message


def test_a_vision_model_outside_the_table_is_judged_by_what_the_api_says() -> None:
    configured = settings(IOBOT_VISION_MODEL="acme/eyes")
    blind = {"acme/eyes": ModelInfo("acme/eyes", None, False)}
    sighted = {"acme/eyes": ModelInfo("acme/eyes", None, True)}
    assert "error" in levels(checks.model_findings(configured, QUOTAS, blind, strict=False))
    assert levels(checks.model_findings(configured, QUOTAS, sighted, strict=False)) == ["warning"]


class FakeClient:
    """The API's model list, counting how often it is asked."""

    def __init__(self, models: list[ModelInfo] | None) -> None:
        self.listed = models
        self.calls = 0

    async def models(self) -> list[ModelInfo]:
        self.calls += 1
        if self.listed is None:
            raise IOIntelligenceError("connection refused")
        return self.listed


def as_client(fake: FakeClient) -> IOClient:
    return cast("IOClient", fake)  # run_findings only lists the models


async def test_run_asks_the_api_only_when_a_model_is_missing_from_the_quota_table() -> None:
    client = FakeClient([])
    assert await checks.run_findings(settings(), QUOTAS, as_client(client)) == []
    assert client.calls == 0
    [finding] = await checks.run_findings(settings(IOBOT_MODEL="acme/gone"), QUOTAS, as_client(client))
    assert client.calls == 1 and finding.level == "error"


async def test_run_starts_with_warnings_when_the_api_cannot_list_its_models() -> None:
    findings = await checks.run_findings(settings(IOBOT_MODEL="acme/new"), QUOTAS, as_client(FakeClient(None)))
    assert levels(findings) == ["warning", "warning"]
    assert "could not be listed" in findings[0].message


# The ledger


async def test_a_ledger_that_opens_gives_no_finding(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = await SQLiteLedger.open(str(path), user_daily_tokens=1)
    await ledger.close()
    assert await checks.ledger_findings(settings(IOBOT_DATABASE_URL=f"sqlite:///{path}")) == []


async def test_no_ledger_yet_is_a_warning_and_nothing_is_created(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    assert levels(await checks.ledger_findings(settings(IOBOT_DATABASE_URL=f"sqlite:///{path}"))) == ["warning"]
    assert not path.exists()


@pytest.mark.parametrize("where", ["missing/ledger.sqlite3", "corrupt.sqlite3"])
async def test_a_ledger_that_cannot_be_opened_or_created_is_an_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "corrupt.sqlite3").write_text("not a database")
    [finding] = await checks.ledger_findings(settings(IOBOT_DATABASE_URL=f"sqlite:///{tmp_path / where}"))
    assert finding.level == "error" and "IOBOT_DATABASE_URL" in finding.message


# `iobot check` and `iobot run` as processes


def test_iobot_check_passes_on_a_sound_setup_and_warns_on_typos(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DISCORD_BOT_TOKNE={SECRET}\n")
    result = iobot(tmp_path, "check", "--emulator", IOBOT_MODLE=SECRET)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: IOBOT_MODLE" in result.stdout and "did you mean IOBOT_MODEL?" in result.stdout
    assert "did you mean DISCORD_BOT_TOKEN?" in result.stdout
    assert "0 error(s)" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_iobot_check_exits_1_listing_every_error(tmp_path: Path) -> None:
    result = iobot(tmp_path, "check", "--emulator", IOBOT_MODEL="acme/typo", IOBOT_VISION_MODEL=TEXT_MODEL)
    assert result.returncode == 1
    assert "error: IOBOT_MODEL: model acme/typo" in result.stdout
    assert "error: IOBOT_VISION_MODEL" in result.stdout and "takes no images" in result.stdout
    assert "2 error(s)" in result.stdout


def test_iobot_check_reports_invalid_settings_without_their_secrets(tmp_path: Path) -> None:
    result = iobot(tmp_path, "check", "--emulator", SLACK_SIGNING_SECRET=SECRET, IOBOT_PORT="not-a-port")
    assert result.returncode == 1
    assert "IOBOT_PORT" in result.stdout and "SLACK_BOT_TOKEN is required" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_iobot_check_without_an_api_key_says_so(tmp_path: Path) -> None:
    result = iobot(tmp_path, "check")
    assert result.returncode == 1 and "IOINTELLIGENCE_API_KEY is not set" in result.stdout


def test_iobot_run_names_its_env_file_first_and_warns_on_unknown_variables(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IOBOT_USER_DAILY_TOKENS=900\n")
    result = iobot(tmp_path, "run", "--emulator", stdin="help\n", IOBOT_LOG_FORMAT="text", IOBOT_MAX_TOKNES="5")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert str(tmp_path / ".env") in lines[0]
    assert any("IOBOT_MAX_TOKNES" in line and "did you mean IOBOT_MAX_TOKENS?" in line for line in lines)


def test_iobot_run_refuses_a_model_neither_the_quota_table_nor_the_api_knows(tmp_path: Path) -> None:
    result = iobot(tmp_path, "run", "--emulator", stdin="help\n", IOBOT_FALLBACK_MODELS="acme/typo")
    assert result.returncode == 2
    assert "IOBOT_FALLBACK_MODELS: model acme/typo" in result.stderr
