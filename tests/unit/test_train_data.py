"""Token streams, their cache, batches, and the learning-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.tokenizer import train_char_tokenizer
from engine.train.data import (
    count_chars,
    encode_split,
    eval_windows,
    random_windows,
    step_generator,
    training_vocabulary,
)
from engine.train.schedule import Schedule

TEXTS = ["<|user|>hi there<|eot|><|bot|>hello!<|eot|>", "<|user|>bye<|eot|>"]


def test_specials_count_as_one_character() -> None:
    assert count_chars(TEXTS) == 4 + len("hi there") + len("hello!") + 2 + len("bye")


def test_encoding_is_cached_by_texts_and_tokenizer(tmp_path: Path) -> None:
    tokenizer = train_char_tokenizer(TEXTS)
    first = encode_split(tokenizer, TEXTS, tmp_path)
    assert first.tokens.tolist() == [i for t in TEXTS for i in tokenizer.encode(t)]
    assert len(list(tmp_path.glob("*.npy"))) == 1
    again = encode_split(tokenizer, TEXTS, tmp_path)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert again.n_chars == first.n_chars
    encode_split(tokenizer, TEXTS[:1], tmp_path)  # other texts: another entry
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_random_windows_are_shifted_by_one_and_reproducible() -> None:
    tokens = torch.arange(1000, dtype=torch.int32)
    x, y = random_windows(tokens, 4, 16, step_generator(1, 5))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(y, x + 1)
    x2, _ = random_windows(tokens, 4, 16, step_generator(1, 5))
    assert torch.equal(x, x2)
    x3, _ = random_windows(tokens, 4, 16, step_generator(1, 6))
    assert not torch.equal(x, x3)


def test_eval_windows_score_every_token_after_the_first_once() -> None:
    tokens = torch.arange(50)
    windows, tail = eval_windows(tokens, 16)
    targets = torch.cat([windows[:, 1:].flatten(), tail[:, 1:].flatten()])  # type: ignore[index]
    assert targets.tolist() == list(range(1, 50))
    subset, none = eval_windows(tokens, 4, max_windows=3)
    assert subset.shape == (3, 5) and none is None


def test_vocabulary_leaves_out_the_role_markers() -> None:
    vocab = training_vocabulary(TEXTS * 3)  # the strict vocabulary wants 3 occurrences
    assert {"hi", "there", "hello", "bye"} == vocab


def test_schedule_warms_up_then_decays_with_steps_or_time() -> None:
    by_steps = Schedule(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, budget_s=None)
    assert by_steps.learning_rate(0, 0.0) == pytest.approx(0.1)
    assert by_steps.learning_rate(9, 0.0) == pytest.approx(1.0)
    assert by_steps.learning_rate(110, 0.0) == pytest.approx(0.1)
    assert by_steps.learning_rate(60, 0.0) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 60 / 110))
    )
    by_time = Schedule(lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=None, budget_s=100.0)
    assert by_time.learning_rate(5, 50.0) == pytest.approx(0.5)
    assert by_time.done(10**6, 99.0) is False and by_time.done(0, 100.0) is True
    with pytest.raises(ValueError):
        Schedule(lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=None, budget_s=None)
