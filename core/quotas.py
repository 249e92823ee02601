"""The per-model daily quota table: data shipped with the package, replaceable by an operator's TOML."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

# When the table gives no context length (N/A), assume this much: small enough to be safe.
DEFAULT_CONTEXT_LENGTH = 8_000


class QuotaFileError(ValueError):
    """The quota table could not be read or is not valid; the message says where and why."""


class ModelLimits(BaseModel):
    """One row of the quota table. A limit of None means the source gives none (N/A)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: Literal["chat", "embedding"] = "chat"
    chat_daily_tokens: int | None = Field(default=None, ge=0)
    api_daily_tokens: int | None = Field(default=None, ge=0)
    embeddings_daily_tokens: int | None = Field(default=None, ge=0)
    context_length: int | None = Field(default=None, gt=0)
    images: bool = False

    @property
    def context_tokens(self) -> int:
        return self.context_length or DEFAULT_CONTEXT_LENGTH


class _QuotaFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: list[ModelLimits] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> _QuotaFile:
        seen: set[str] = set()
        for row in self.model:
            if row.name in seen:
                raise ValueError(f"model {row.name!r} is listed twice")
            seen.add(row.name)
        return self


class QuotaTable:
    """Limits by model name, in the order the table lists them."""

    def __init__(self, rows: list[ModelLimits]) -> None:
        self._rows = {row.name: row for row in rows}

    def __iter__(self):
        return iter(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def get(self, name: str) -> ModelLimits | None:
        return self._rows.get(name)

    def chat_models(self) -> list[ModelLimits]:
        return [row for row in self if row.kind == "chat"]

    def text_models(self) -> list[ModelLimits]:
        """The chat models that take no images: what a person may pick unless `IOBOT_CHAT_MODELS` says otherwise."""
        return [row for row in self if row.kind == "chat" and not row.images]


def parse_quota_table(text: str, source: str = "quota table") -> QuotaTable:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise QuotaFileError(f"{source}: not valid TOML: {exc}") from None
    try:
        parsed = _QuotaFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(error, data) for error in exc.errors())
        raise QuotaFileError(f"{source}: {problems}") from None
    return QuotaTable(parsed.model)


def load_quota_table(path: Path | str | None = None) -> QuotaTable:
    """The operator's table at `path`, or the built-in one."""
    if path is None:
        text = resources.files("core").joinpath("quotas.toml").read_text(encoding="utf-8")
        return parse_quota_table(text, "built-in quota table")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise QuotaFileError(f"quota file {path}: cannot be read ({exc.strerror})") from None
    return parse_quota_table(text, f"quota file {path}")


def _describe(error: ErrorDetails, data: dict[str, Any]) -> str:
    """A validation error as `model[3] (name) field: message`."""
    loc = list(error["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "model" and isinstance(loc[1], int):
        index = loc[1]
        rows = data.get("model") or []
        name = rows[index].get("name") if index < len(rows) and isinstance(rows[index], dict) else None
        where = f"model[{index}]" + (f" ({name})" if name else "")
        loc = loc[2:]
    field = ".".join(str(part) for part in loc)
    return " ".join(part for part in (where, field) if part) + f": {error['msg']}"
