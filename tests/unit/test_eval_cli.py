"""``parley eval`` and the measures behind it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bot.cli import cli
from engine.checkpoint import load_checkpoint
from engine.models import LanguageModel, ModelConfig, build_model
from engine.models.config import PRESETS
from engine.tokenizer import Tokenizer, train_char_tokenizer
from engine.train.data import TokenSplit, count_chars
from engine.train.evaluate import (
    Ask,
    evaluate_loss,
    generate_replies,
    sample_replies,
    trim_cut_reply,
)
from engine.train.run import run_training
from tests.unit.test_train_helpers import TINY, TINY_PRESET, tiny_config, tiny_options, write_corpus


@pytest.fixture(autouse=True)
def tiny_preset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(PRESETS, TINY_PRESET, TINY)
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PARLEY_REDIS_URL", raising=False)
    monkeypatch.delenv("PARLEY_REDIS__URL", raising=False)


def test_eval_json_has_the_keys(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "chats.jsonl")
    result = run_training(tiny_options(tmp_path, corpus), tiny_config(max_steps=10))
    ran = CliRunner().invoke(
        cli, ["eval", str(result.checkpoint), "--json"], catch_exceptions=False
    )
    assert ran.exit_code == 0, ran.output
    report = json.loads(ran.output)
    for key in ("val_bpc", "val_loss", "word_validity", "distinct_2", "reply_chars", "samples"):
        assert key in report, key
    assert 0.0 <= report["word_validity"] <= 1.0
    assert report["samples"][0]["prompt"] == "hi! how are you?"
    # The data defaults to what the model was trained on: the same split, the same score.
    assert report["val_bpc"] == pytest.approx(result.metrics["val_bpc"], rel=1e-3)


def test_eval_of_a_missing_checkpoint_is_a_clean_error(tmp_path: Path) -> None:
    ran = CliRunner().invoke(cli, ["eval", str(tmp_path / "nothing"), "--json"])
    assert ran.exit_code != 0
    assert "checkpoint directory not found" in ran.output and "Traceback" not in ran.output


def test_char_model_bpc_is_its_loss_in_bits() -> None:
    texts = ["<|user|>hello there<|eot|><|bot|>hi!<|eot|>"] * 20
    tokenizer = train_char_tokenizer(texts)
    ids = np.array([i for t in texts for i in tokenizer.encode(t)], dtype=np.int32)
    split = TokenSplit(ids, count_chars(texts))
    assert split.n_chars == len(ids)  # a special token counts as one character
    config = ModelConfig(
        arch="gru", vocab_size=tokenizer.vocab_size, n_embd=8, n_hidden=8, block_size=16
    )
    report = evaluate_loss(build_model(config), split)
    assert report.tokens == len(ids) - 1  # every token after the first, tail included
    assert report.bpc == pytest.approx(report.loss / math.log(2) * (len(ids) - 1) / len(ids))


@pytest.fixture
def trained(tmp_path: Path) -> tuple[LanguageModel, Tokenizer]:
    corpus = write_corpus(tmp_path / "chats.jsonl")
    result = run_training(tiny_options(tmp_path, corpus), tiny_config(max_steps=10))
    ckpt = load_checkpoint(result.checkpoint)
    return ckpt.model, ckpt.tokenizer


def test_a_reply_is_the_same_sampled_alone_or_in_a_batch(trained) -> None:
    """Replies come from the engine's batch path: row i is seeded from (seed, i), and a batch
    gives each row what it would get alone."""
    model, tokenizer = trained
    batch = sample_replies(model, tokenizer, "hi there", n=3, seed=5, max_new_tokens=12)
    alone = sample_replies(model, tokenizer, "hi there", n=1, seed=5, max_new_tokens=12)
    assert batch[0] == alone[0]
    assert sample_replies(model, tokenizer, "hi there", n=3, seed=5, max_new_tokens=12) == batch
    assert all("<|" not in r for r in batch)  # no special token ever reaches a reply
    assert model.training is False  # a loaded checkpoint stays in eval mode


def test_generating_leaves_a_training_model_in_training_mode(trained) -> None:
    model, tokenizer = trained
    model.train()
    replies = generate_replies(model, tokenizer, [Ask("hi"), Ask("and you?", (("user", "hi"),))])
    assert len(replies) == 2 and model.training


@pytest.mark.parametrize(
    ("cut", "kept"),
    [("ab cd e", "ab cd"), ("ab cd\nef", "ab cd"), ("abcdef", ""), ("ab  ", "ab")],
)
def test_a_reply_cut_off_by_the_budget_loses_its_half_word(cut: str, kept: str) -> None:
    assert trim_cut_reply(cut) == kept
