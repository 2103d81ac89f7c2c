"""Kill a run mid-way, start it again: it ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.models.config import PRESETS
from engine.train.run import run_training
from engine.train.state import find_state
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


class _Crash(Exception):
    pass


def _crash_at(step: int):  # type: ignore[no-untyped-def]
    def on_step(done: int) -> None:
        if done == step:
            raise _Crash

    return on_step


def test_a_crashed_run_resumes_where_its_state_was_saved(tmp_path: Path, corpus: Path) -> None:
    whole = run_training(tiny_options(tmp_path / "a", corpus), tiny_config())

    opts = tiny_options(tmp_path / "b", corpus)
    with pytest.raises(_Crash):  # killed after step 12: the state of step 10 is on disk
        run_training(opts, tiny_config(), on_step=_crash_at(12))
    assert find_state(opts.out) is not None
    resumed = run_training(opts, tiny_config())

    assert resumed.metrics["steps"] == 20
    assert resumed.metrics["history"]["val"] == whole.metrics["history"]["val"]
    a, b = load_checkpoint(whole.checkpoint).model, load_checkpoint(resumed.checkpoint).model
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)


def test_ctrl_c_saves_the_state_at_the_next_step_boundary(tmp_path: Path, corpus: Path) -> None:
    whole = run_training(tiny_options(tmp_path / "a", corpus), tiny_config())

    def press_ctrl_c(step: int) -> None:
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    opts = tiny_options(tmp_path / "b", corpus)
    with pytest.raises(KeyboardInterrupt):
        run_training(opts, tiny_config(), on_step=press_ctrl_c)
    state = find_state(opts.out)
    assert state is not None
    assert json.loads((state / "state.json").read_text())["progress"]["step"] == 7
    resumed = run_training(opts, tiny_config())
    assert resumed.metrics["history"] == whole.metrics["history"]
    assert resumed.metrics["val_loss"] == pytest.approx(whole.metrics["val_loss"], abs=1e-6)
