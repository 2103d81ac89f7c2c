"""The trainer on a tiny model: it learns, and saves a checkpoint the engine loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.checkpoint import load_checkpoint
from engine.data.remembered import REPLIES_FILE, read_reply_pairs
from engine.models.config import PRESETS
from engine.quality.relevance import turns_of
from engine.train.data import load_texts
from engine.train.evaluate import sample_replies
from engine.train.run import run_training
from engine.train.state import STATE_DIR
from tests.unit.test_train_helpers import (
    TINY,
    TINY_PRESET,
    tiny_config,
    tiny_options,
    write_corpus,
)


@pytest.fixture(autouse=True)
def tiny_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRESETS, TINY_PRESET, TINY)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "chats.jsonl")


def test_twenty_steps_lower_the_loss_and_write_a_loadable_checkpoint(
    tmp_path: Path, corpus: Path
) -> None:
    result = run_training(tiny_options(tmp_path, corpus), tiny_config())
    val = result.metrics["history"]["val"]
    assert result.metrics["steps"] == 20
    assert val[-1][1] < val[0][1] - 0.3  # nats/token
    out = result.checkpoint
    for name in ("model.safetensors", "config.json", "tokenizer.json", "loss.png"):
        assert (out / name).is_file(), name
    assert not (out / STATE_DIR).exists()  # a finished run leaves no resume state
    ckpt = load_checkpoint(out)
    assert ckpt.preset == TINY_PRESET and ckpt.metrics["val_bpc"] > 0
    assert ckpt.provenance["seed"] == 3 and ckpt.provenance["data"] == [str(corpus)]
    replies = sample_replies(ckpt.model, ckpt.tokenizer, "hi there", n=2, max_new_tokens=20)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    # It remembers its training conversations' replies, and nothing held out.
    remembered = {p.reply for p in read_reply_pairs(out / REPLIES_FILE)}
    texts = load_texts([str(corpus)], val_fraction=tiny_options(tmp_path, corpus).val_fraction)
    held_out = {t for text in texts.val + texts.test for _, t in turns_of(text)}
    trained = {t for text in texts.train for _, t in turns_of(text)}
    assert remembered and remembered <= trained
    assert not remembered & (held_out - trained)
    assert [p.name for p in tmp_path.iterdir() if "replies" in p.name] == []  # no leftovers


def test_the_compiled_loss_trains_too(tmp_path: Path, corpus: Path) -> None:
    cfg = tiny_config(max_steps=6, eval_interval=6, compile_loss=True)
    result = run_training(tiny_options(tmp_path, corpus), cfg)
    assert result.metrics["steps"] == 6
