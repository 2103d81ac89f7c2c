"""``parley eval`` and the measures behind it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bot.cli import cli
from engine.models import ModelConfig, build_model
from engine.models.config import PRESETS
from engine.tokenizer import train_char_tokenizer
from engine.train.data import TokenSplit, count_chars
from engine.train.evaluate import evaluate_loss, sample_replies
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


class _Scripted(torch.nn.Module):
    """A stand-in model that says ``script`` token by token, then ``<|eot|>``, then junk."""

    def __init__(self, script: list[int], eot: int, vocab_size: int) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives .device and .dtype
        self.script, self.eot, self.vocab_size, self.calls = script, eot, vocab_size, 0

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def forward(self, tokens: torch.Tensor, state: object = None, *, last_only: bool = False):  # type: ignore[no-untyped-def]
        step = self.calls
        self.calls += 1
        wanted = self.script[step] if step < len(self.script) else self.eot
        if step > len(self.script):
            wanted = self.script[0]  # would show up if generation ran past <|eot|>
        logits = torch.full((tokens.shape[0], 1, self.vocab_size), -1e4)
        logits[:, :, wanted] = 1e4
        return logits, None


def test_replies_are_the_tokens_before_end_of_turn() -> None:
    tokenizer = train_char_tokenizer(["<|user|>hi<|eot|><|bot|>yo<|eot|>"])
    script = tokenizer.encode("yo")
    model = _Scripted(script, tokenizer.eot_id, tokenizer.vocab_size)
    replies = sample_replies(model, tokenizer, "hi", n=3, max_new_tokens=10)  # type: ignore[arg-type]
    assert replies == ["yo", "yo", "yo"]
    assert model.calls == len(script) + 1  # stopped once every row had said <|eot|>


def test_a_reply_cut_off_by_the_budget_loses_its_half_word() -> None:
    tokenizer = train_char_tokenizer(["<|user|>hi<|eot|><|bot|>ab cd ef<|eot|>"])
    script = tokenizer.encode("ab cd ef")
    model = _Scripted(script, tokenizer.eot_id, tokenizer.vocab_size)
    replies = sample_replies(model, tokenizer, "hi", n=1, max_new_tokens=7)  # type: ignore[arg-type]
    assert replies == ["ab cd"]  # "ab cd e" stopped mid-word
