"""A checkpoint the trainer writes loads in the engine, identically; a broken one says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bot.errors import ModelError
from engine.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from engine.models import LanguageModel, ModelConfig, build_model
from engine.tokenizer import CharTokenizer, train_char_tokenizer

TOK = train_char_tokenizer(["<|user|>hello there<|eot|><|bot|>hi, 你好<|eot|>"])
CONFIGS = {
    "gru": ModelConfig(arch="gru", vocab_size=TOK.vocab_size, n_embd=16, n_hidden=24),
    "gpt": ModelConfig(
        arch="gpt", vocab_size=TOK.vocab_size, n_embd=32, n_layer=2, n_head=4, block_size=32
    ),
}
METRICS = {"val_loss": 1.25, "steps": 10, "history": [3.0, 2.0]}
PROVENANCE = {"sources": ["archive.sqlite"], "rows": 42, "seed": 1337}


@pytest.fixture(params=sorted(CONFIGS))
def model(request: pytest.FixtureRequest) -> LanguageModel:
    torch.manual_seed(0)
    return build_model(CONFIGS[request.param]).eval()


def save(path: Path, model: nn.Module, **kw: bool) -> Path:
    return save_checkpoint(
        path, model, TOK, preset="test", metrics=METRICS, provenance=PROVENANCE, **kw
    )


@torch.no_grad()
def test_save_load_gives_identical_logits(model: LanguageModel, tmp_path: Path) -> None:
    path = save(tmp_path / "v0001", model)
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, Checkpoint)
    assert (ckpt.version, ckpt.preset, ckpt.config) == ("v0001", "test", model.config)
    assert (ckpt.metrics, ckpt.provenance) == (METRICS, PROVENANCE)
    assert not ckpt.model.training
    assert isinstance(ckpt.tokenizer, CharTokenizer) and ckpt.tokenizer.chars == TOK.chars
    x = torch.tensor([TOK.encode("<|user|>hello 你好<|eot|><|bot|>")])
    torch.testing.assert_close(ckpt.model(x, None)[0], model(x, None)[0], atol=0, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["v0001"]  # no temporary dirs left


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    gpt = build_model(CONFIGS["gpt"])
    loaded = load_checkpoint(save(tmp_path / "v1", gpt)).model
    assert loaded.lm_head.weight is loaded.wte.weight  # type: ignore[union-attr]
    assert loaded.num_params() == gpt.num_params()


def test_wrapped_model_and_dtype(tmp_path: Path) -> None:
    class Wrapper(nn.Module):  # what DDP looks like from here
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    gpt = build_model(CONFIGS["gpt"])
    ckpt = load_checkpoint(save(tmp_path / "v1", Wrapper(gpt)), dtype=torch.bfloat16)
    assert ckpt.model.dtype == torch.bfloat16
    logits, _ = ckpt.model(torch.tensor([[1, 2, 3]]), None)
    assert logits.dtype == torch.bfloat16


def test_existing_directory_needs_overwrite(model: LanguageModel, tmp_path: Path) -> None:
    path = save(tmp_path / "v1", model)
    with pytest.raises(ModelError, match="already exists"):
        save(path, model)
    save(path, model, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def test_missing_checkpoint_or_file(model: LanguageModel, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    path = save(tmp_path / "v1", model)
    (path / MODEL_FILE).unlink()
    with pytest.raises(ModelError, match=MODEL_FILE):
        load_checkpoint(path)


def test_corrupted_weights(model: LanguageModel, tmp_path: Path) -> None:
    path = save(tmp_path / "v1", model)
    data = (path / MODEL_FILE).read_bytes()
    (path / MODEL_FILE).write_bytes(data[: len(data) // 2])  # a half-written file
    with pytest.raises(ModelError, match="cannot read weights"):
        load_checkpoint(path)
    (path / MODEL_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError):
        load_checkpoint(path)


def test_config_that_does_not_match_the_weights(model: LanguageModel, tmp_path: Path) -> None:
    path = save(tmp_path / "v1", model)
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["model"]["n_embd"] *= 2
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="shape"):
        load_checkpoint(path)


def test_bad_config_json(model: LanguageModel, tmp_path: Path) -> None:
    path = save(tmp_path / "v1", model)
    (path / CONFIG_FILE).write_text("{")
    with pytest.raises(ModelError, match=CONFIG_FILE):
        load_checkpoint(path)
    (path / CONFIG_FILE).write_text(json.dumps({"format": 1, "model": {"arch": "lstm"}}))
    with pytest.raises(ModelError, match="invalid model config"):
        load_checkpoint(path)


def test_unserialisable_metrics_fail_and_leave_nothing_behind(
    model: LanguageModel, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="metrics"):
        save_checkpoint(
            tmp_path / "v1", model, TOK, preset="t", metrics={"x": object()}, provenance={}
        )
    assert list(tmp_path.iterdir()) == []
