"""A run stops at its wall-clock budget, or early when validation stops improving."""

from __future__ import annotations

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


class TickingClock:
    """A clock that moves ``tick_s`` each time it is read: the run's budget is reached after
    a known number of steps, however fast or busy the machine is."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s, self.now_s = tick_s, 0.0

    def __call__(self) -> float:
        self.now_s += self.tick_s
        return self.now_s


def test_the_budget_stops_the_run_when_its_time_is_up(tmp_path: Path, corpus: Path) -> None:
    cfg = tiny_config(max_steps=None, budget_s=2.0, eval_interval=50)
    # The loop reads the clock once at the start and once before each step: at 0.25 s a
    # tick, the 8th step would start at 2.0 s, so the budget lets exactly 7 run.
    result = run_training(tiny_options(tmp_path, corpus), cfg, clock=TickingClock(0.25))
    assert result.metrics["stopped"] == "budget"
    assert result.metrics["steps"] == 7
    assert result.metrics["wall_time_s"] == 2.0


def test_no_improvement_stops_early(tmp_path: Path, corpus: Path) -> None:
    cfg = tiny_config(max_steps=200, lr=1e-9, patience=2, eval_interval=5)
    result = run_training(tiny_options(tmp_path, corpus), cfg)
    assert result.metrics["stopped"] == "early_stop"
    assert result.metrics["steps"] == 15  # best at step 5, then two evaluations without gain
