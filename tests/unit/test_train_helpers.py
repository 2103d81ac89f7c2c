"""Shared pieces of the training tests: a tiny corpus, a tiny preset, fast settings.

Named ``test_train_*`` so it sits with the tests it serves; it holds no tests itself.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from engine.models.config import PRESETS, ModelConfig
from engine.train.loop import TrainConfig
from engine.train.run import RunOptions, train_config

TINY_PRESET = "test-tiny"
TINY = ModelConfig(arch="gpt", n_embd=32, n_layer=2, n_head=2, block_size=32)

_LINES = [
    "hi there",
    "hello, how are you?",
    "good thanks, and you?",
    "pretty good",
    "what are you up to?",
    "just reading a book",
    "nice, which one?",
    "a mystery novel",
    "do you like music?",
    "yes, mostly jazz",
]


def register_tiny_preset() -> None:
    """Add the tiny preset to PRESETS (tests undo it with monkeypatch where they can)."""
    PRESETS[TINY_PRESET] = TINY


def write_corpus(path: Path, n: int = 60, seed: int = 0) -> Path:
    """A Parley JSONL file of ``n`` short two-person chats built from a few lines."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            start = rng.randrange(len(_LINES))
            messages = [
                {"author": "ab"[k % 2], "text": _LINES[(start + k) % len(_LINES)]}
                for k in range(rng.randint(2, 6))
            ]
            f.write(json.dumps({"id": f"c{i}", "messages": messages}) + "\n")
    return path


def tiny_options(tmp_path: Path, data: Path, **overrides: Any) -> RunOptions:
    fields: dict[str, Any] = {
        "data": (str(data),),
        "preset": TINY_PRESET,
        "tokenizer": "char",
        "val_fraction": 0.2,
        "out": tmp_path / "out",
        "cache_dir": tmp_path / "cache",
    }
    fields.update(overrides)
    return RunOptions(**fields)


def tiny_config(**overrides: Any) -> TrainConfig:
    fields: dict[str, Any] = {
        "max_steps": 20,
        "budget_s": None,
        "batch_size": 8,
        "lr": 1e-2,
        "warmup_steps": 2,
        "eval_interval": 5,
        "eval_windows": 8,
        "patience": 0,
        "seed": 3,
        "progress_bar": False,
        "samples_per_prompt": 1,
        "compile_loss": False,  # compiling costs seconds; test_train_loop checks it once
    }
    fields.update(overrides)
    return train_config(TINY_PRESET, **fields)
