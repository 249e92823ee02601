"""The quota table: the seed's figures shipped as data, replaceable by an operator's TOML, validated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.quotas import ModelLimits, QuotaFileError, QuotaTable, load_quota_table

SEED = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "000_7ba87a35c6c7b563.txt"


def row(table: QuotaTable, name: str) -> ModelLimits:
    found = table.get(name)
    assert found is not None, f"{name} is not in the table"
    return found


def test_the_built_in_table_has_every_model_of_the_seed():
    table = load_quota_table()
    assert len(table) == 34
    llama = row(table, "meta-llama/Llama-3.3-70B-Instruct")
    assert (llama.chat_daily_tokens, llama.api_daily_tokens, llama.context_length, llama.images) == (
        1_000_000,
        500_000,
        128_000,
        False,
    )
    vision = row(table, "meta-llama/Llama-3.2-90B-Vision-Instruct")
    assert (vision.chat_daily_tokens, vision.api_daily_tokens, vision.context_length, vision.images) == (0, 500_000, 16_000, True)
    assert row(table, "Qwen/Qwen2-VL-7B-Instruct").context_length is None  # N/A in the source
    embed = row(table, "BAAI/bge-multilingual-gemma2")
    assert embed.kind == "embedding" and embed.embeddings_daily_tokens == 50_000_000 and embed.api_daily_tokens is None
    assert [m.name for m in table if m.images] == ["meta-llama/Llama-3.2-90B-Vision-Instruct", "Qwen/Qwen2-VL-7B-Instruct"]


@pytest.mark.skipif(not SEED.exists(), reason="the seed document lives beside the project, not in it")
def test_the_built_in_table_matches_the_seed_row_by_row():
    table = load_quota_table()
    for line in SEED.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| ([\w./-]+) \| ([\d,]+ tk|N/A) \| ([\d,]+ tk|N/A) \| ([\d,]+ tk|N/A) \| ([\d,]+ tk|N/A) \|$", line)
        if not match:
            continue
        found = row(table, match.group(1))
        figures = [None if value == "N/A" else int(value.removesuffix(" tk").replace(",", "")) for value in match.groups()[1:]]
        assert [
            found.chat_daily_tokens,
            found.api_daily_tokens,
            found.embeddings_daily_tokens,
            found.context_length,
        ] == figures, found.name


def test_an_operator_file_replaces_the_table(tmp_path):
    path = tmp_path / "quotas.toml"
    path.write_text('[[model]]\nname = "acme/model"\napi_daily_tokens = 1_000\ncontext_length = 4_096\nimages = true\n')
    table = load_quota_table(path)
    assert [limits.name for limits in table] == ["acme/model"]
    assert row(table, "acme/model").images and table.get("meta-llama/Llama-3.3-70B-Instruct") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[model]]\nname = 'a'\napi_daily_tokens = -5\n", "model[0] (a) api_daily_tokens"),
        ("[[model]]\nname = 'a'\ncontext = 5\n", "model[0] (a) context: Extra inputs are not permitted"),
        ("[[model]]\nname = 'a'\n[[model]]\nname = 'a'\n", "listed twice"),
        ("[[model]]\nname = 'a'\nkind = 'video'\n", "model[0] (a) kind"),
        ("model = 3\n", "model"),
        ("[[model]\nname = 'a'\n", "not valid TOML"),
    ],
)
def test_invalid_files_are_refused_with_where_and_why(tmp_path, text, message):
    path = tmp_path / "quotas.toml"
    path.write_text(text)
    with pytest.raises(QuotaFileError) as caught:
        load_quota_table(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(QuotaFileError, match="cannot be read"):
        load_quota_table(tmp_path / "nope.toml")
