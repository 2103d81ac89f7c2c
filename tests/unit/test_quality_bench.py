"""bench/quality.py runs end to end on a tiny model (``--quick``): every key the README and
the issue quote is printed; the figures themselves are not checked here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench import quality as quality_bench
from engine.models.config import PRESETS
from engine.train.run import run_training
from tests.unit.test_train_helpers import TINY, TINY_PRESET, tiny_config, tiny_options, write_corpus


@pytest.fixture(autouse=True)
def tiny_preset_and_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(PRESETS, TINY_PRESET, TINY)
    threads = torch.get_num_threads()  # the benchmark sets them for the whole process
    yield
    torch.set_num_threads(threads)


def test_quality_bench_quick_prints_every_mode_and_the_judge_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write_corpus(tmp_path / "chats.jsonl", n=400)
    ckpt = run_training(tiny_options(tmp_path, corpus), tiny_config(max_steps=5)).checkpoint
    out = tmp_path / "quality.json"
    argv = ["--quick", "--checkpoint", str(ckpt), "--threads", "1", "--out", str(out)]
    assert quality_bench.main([*argv, "--note", "smoke"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert set(printed["modes"]) == {
        "generate", "retrieve", "hybrid", "retrieve_pmi", "hybrid_pmi", "retrieve_fused",
        "hybrid_fused",
    }  # fmt: skip
    for figures in printed["modes"].values():
        assert 0.0 <= figures["judge_preference"] <= 1.0
        assert -1.0 <= figures["judge_score"] <= 1.0
    assert printed["default_mode"] in printed["modes"]
    default = printed["modes"][printed["default_mode"]]
    assert printed["judge_preference"] == default["judge_preference"]
    assert printed["judge_relative_score"] == default["judge_relative_score"]
    assert isinstance(printed["human"]["judge_score"], float)
    assert isinstance(printed["random"]["judge_score"], float)
    assert printed["contexts"] == 6 and len(printed["samples"]) == 5
    assert printed["meta"]["commit"] and printed["notes"] == ["smoke"]
