"""The learning loop's commands: ``parley archive import|stats|export`` and ``parley train
--from-archive`` (each run in a fresh run directory, consent applied)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bot.archive import Archive
from bot.cli import cli
from engine.models.config import PRESETS
from tests.unit.test_train_helpers import TINY, TINY_PRESET, write_corpus

FIXTURES = Path(__file__).parent.parent / "fixtures" / "data"
FAST = ["--max-steps", "4", "--batch-size", "4", "--eval-interval", "2", "--tokenizer", "char"]


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(PRESETS, TINY_PRESET, TINY)
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PARLEY_REDIS_URL", raising=False)
    monkeypatch.delenv("PARLEY_REDIS__URL", raising=False)


def parley(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_import_is_idempotent_and_stats_count_it(tmp_path: Path) -> None:
    telegram = FIXTURES / "telegram_group.json"
    first = parley("archive", "import", str(telegram), str(FIXTURES / "conversations.jsonl"))
    assert first.exit_code == 0, first.output
    assert "new messages" in first.output
    again = parley("archive", "import", str(telegram))
    assert again.exit_code == 0 and ", 0 new messages" in again.output
    stats = parley("archive", "stats")
    assert stats.exit_code == 0 and "telegram" in stats.output and "total" in stats.output


def test_a_broken_export_is_refused_whole(tmp_path: Path) -> None:
    result = parley("archive", "import", str(FIXTURES / "broken_truncated.jsonl"))
    assert result.exit_code == 1 and "broken_truncated.jsonl" in result.output
    with Archive(tmp_path / "data" / "archive.sqlite3") as archive:
        assert archive.total() == 0


def test_export_leaves_out_opted_out_users(tmp_path: Path) -> None:
    assert parley("archive", "import", str(FIXTURES / "telegram_group.json")).exit_code == 0
    with Archive(tmp_path / "data" / "archive.sqlite3") as archive:
        users = {c.record["messages"][0]["author"] for c in archive.conversations()}  # type: ignore[index]
        gone = sorted(users)[0]
        archive.opt_out(gone)
    out = tmp_path / "export.jsonl"
    result = parley("archive", "export", str(out))
    assert result.exit_code == 0 and "1 opted-out user(s) left out" in result.output
    authors = {
        m["author"] for line in out.read_text().splitlines() for m in json.loads(line)["messages"]
    }
    assert gone not in authors and authors


def test_train_from_the_archive_uses_a_fresh_run_directory_each_time(tmp_path: Path) -> None:
    assert parley("archive", "import", str(FIXTURES / "conversations.jsonl")).exit_code == 0
    runs = tmp_path / "data" / "runs"
    corpus = str(write_corpus(tmp_path / "corpus.jsonl"))
    for _ in range(2):  # the nightly unit's second run must not meet the first one's model
        result = parley("train", "--from-archive", "--data", corpus, "--preset", TINY_PRESET, *FAST)
        assert result.exit_code == 0, result.output
    made = sorted(runs.iterdir())
    assert len(made) == 2
    for run in made:
        provenance = json.loads((run / "provenance.json").read_text())
        assert provenance["data"][0] == str(run / "archive.jsonl")


def test_train_from_an_empty_archive_says_so(tmp_path: Path) -> None:
    result = parley("train", "--from-archive", "--preset", TINY_PRESET, *FAST)
    assert result.exit_code == 1 and "no archive yet" in result.output
