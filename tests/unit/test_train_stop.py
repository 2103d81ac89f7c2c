"""A run stops at its wall-clock budget, or early when validation stops improving."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.models.config import PRESETS
from engine.train.run import run_training
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


def test_the_budget_stops_the_run_on_time(tmp_path: Path, corpus: Path) -> None:
    cfg = tiny_config(max_steps=None, budget_s=2.0, eval_interval=50)
    started = time.monotonic()
    result = run_training(tiny_options(tmp_path, corpus), cfg)
    assert result.metrics["stopped"] == "budget"
    assert 2.0 <= result.metrics["wall_time_s"] < 3.0
    assert time.monotonic() - started < 20


def test_no_improvement_stops_early(tmp_path: Path, corpus: Path) -> None:
    cfg = tiny_config(max_steps=200, lr=1e-9, patience=2, eval_interval=5)
    result = run_training(tiny_options(tmp_path, corpus), cfg)
    assert result.metrics["stopped"] == "early_stop"
    assert result.metrics["steps"] == 15  # best at step 5, then two evaluations without gain
