"""``parley eval`` reports the test split: loss, R@1 of 10 beside the TF-IDF floor, words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import cli
from engine.models.config import PRESETS
from engine.quality.splits import split_key
from engine.train.data import load_texts
from engine.train.run import run_training
from tests.unit.test_train_helpers import TINY, TINY_PRESET, tiny_config, tiny_options, write_corpus


@pytest.fixture(autouse=True)
def tiny_preset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(PRESETS, TINY_PRESET, TINY)
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PARLEY_REDIS_URL", raising=False)
    monkeypatch.delenv("PARLEY_REDIS__URL", raising=False)


def test_training_never_sees_the_test_conversations(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "chats.jsonl", n=400)
    texts = load_texts([str(corpus)], val_fraction=0.1, test_fraction=0.05)
    held_out = {f"c{i}" for i in range(400) if split_key(f"c{i}") < 0.05}
    counts = texts.provenance["conversations"]
    assert isinstance(counts, dict)
    assert counts["test"] == len(texts.test) == len(held_out) > 0
    assert counts["train"] + counts["val"] + counts["test"] == 400
    assert len(texts.train) == counts["train"]  # every conversation has a reply: all kept


def test_eval_json_reports_the_test_split(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "chats.jsonl", n=400)
    result = run_training(tiny_options(tmp_path, corpus), tiny_config(max_steps=10))
    ran = CliRunner().invoke(
        cli, ["eval", str(result.checkpoint), "--json"], catch_exceptions=False
    )
    assert ran.exit_code == 0, ran.output
    report = json.loads(ran.output)
    for key in (
        "test_bpc",
        "r_at_1",
        "r_at_1_tfidf",
        "r_at_1_fused",
        "word_validity",
        "reply_chars",
    ):
        assert isinstance(report[key], float), key
    assert 0.0 <= report["r_at_1"] <= 1.0 and 0.0 <= report["r_at_1_tfidf"] <= 1.0
    assert report["contexts"] > 0 and report["test_bpc"] > 0
    assert 0.0 <= report["distinct_2"] <= 1.0
    text = CliRunner().invoke(cli, ["eval", str(result.checkpoint)], catch_exceptions=False)
    assert "R@1 of 10" in text.output and "TF-IDF floor" in text.output


def test_eval_of_a_tiny_archive_says_what_it_could_not_measure(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "chats.jsonl", n=60)  # one test conversation
    result = run_training(tiny_options(tmp_path, corpus), tiny_config(max_steps=5))
    ran = CliRunner().invoke(
        cli, ["eval", str(result.checkpoint), "--json"], catch_exceptions=False
    )
    report = json.loads(ran.output)
    assert report["r_at_1"] is None and report["contexts"] == 0
    assert report["test_bpc"] > 0
