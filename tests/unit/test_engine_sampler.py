"""Per-request sampling options: clamped to the admin's bounds; the decode batch's row sampler
chooses what the list-based sampler chooses, row for row."""

from __future__ import annotations

import pytest
import torch

from bot.settings import SamplingSettings
from bot.wire import Sampling
from engine.sampler import (
    REPETITION_WINDOW,
    RowSampler,
    SamplingParams,
    recent_ids,
    sample_next,
    temperature_probs,
)
from engine.sampling import logits_to_probs

BOUNDS = SamplingSettings(
    temperature=0.7,
    top_k=40,
    top_p=0.9,
    repetition_penalty=1.2,
    max_new_tokens=100,
    max_temperature=1.5,
    max_new_tokens_limit=300,
)


def params(**asked: object) -> SamplingParams:
    return SamplingParams.from_request(Sampling(**asked), BOUNDS)  # type: ignore[arg-type]


def test_defaults_fill_what_a_request_leaves_out() -> None:
    p = params()
    assert (p.row.temperature, p.row.top_k, p.row.top_p) == (0.7, 40, 0.9)
    assert (p.row.repetition_penalty, p.max_new_tokens, p.stop) == (1.2, 100, ())
    assert p.row.generator is None


@pytest.mark.parametrize(
    ("asked", "field", "expected"),
    [
        ({"temperature": 9.0}, "temperature", 1.5),  # admin's max_temperature
        ({"temperature": -1.0}, "temperature", 0.0),  # 0 = greedy, never negative
        ({"top_p": 3.0}, "top_p", 1.0),
        ({"top_p": -0.5}, "top_p", 1e-6),  # still keeps the single most likely token
        ({"top_k": -5}, "top_k", 0),  # 0 = off
        ({"repetition_penalty": 0.1}, "repetition_penalty", 1.0),  # never a reward
        ({"repetition_penalty": 50.0}, "repetition_penalty", 2.0),
    ],
)
def test_request_options_are_clamped(asked: dict[str, float], field: str, expected: float) -> None:
    assert getattr(params(**asked).row, field) == pytest.approx(expected)


def test_reply_length_is_clamped_to_the_admins_limit() -> None:
    assert params(max_new_tokens=10_000).max_new_tokens == 300
    assert params(max_new_tokens=0).max_new_tokens == 1
    assert params(max_new_tokens=-3).max_new_tokens == 1
    assert params(max_new_tokens=42).max_new_tokens == 42


def test_stop_strings_are_capped_and_empty_ones_dropped() -> None:
    assert params(stop=("", "a", "b", "c", "d", "e")).stop == ("a", "b", "c")


def test_a_seed_makes_sampling_reproducible() -> None:
    logits = torch.randn(1, 50)
    draws = [sample_next(logits, [params(seed=7, temperature=1.0)], [[]]) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    others = {
        tuple(sample_next(logits, [params(seed=s, temperature=1.0)], [[]])) for s in range(20)
    }
    assert len(others) > 1


def test_temperature_probs_equal_logits_to_probs_without_filters() -> None:
    logits = torch.randn(5, 30)
    temperature = torch.tensor([0.0, 0.5, 1.0, 1.7, 0.0])
    want = logits_to_probs(logits, temperature, torch.zeros(5, dtype=torch.long), torch.ones(5))
    torch.testing.assert_close(temperature_probs(logits, temperature), want)


def row_sampler_vs_lists(rows: list[SamplingParams], steps: int, seed: int) -> None:
    """A RowSampler with rows joining and leaving picks what sample_next picks."""
    torch.manual_seed(seed)
    V = 25
    sampler = RowSampler(max_batch=len(rows), device=torch.device("cpu"))
    generated: list[list[int]] = [[int(i)] for i in range(len(rows))]
    for r, p in enumerate(rows):
        sampler.join(r, p, generated[r])
    live = list(range(len(rows)))  # live[i]: which request sits in row i
    for step in range(steps):
        logits = torch.randn(len(live), V) * 3
        got = sampler.sample(logits).tolist()
        want = sample_next(logits, [rows[c] for c in live], [generated[c] for c in live])
        assert got == want, f"step {step}"
        for c, t in zip(live, got, strict=True):
            generated[c].append(t)
        if step == 3 and len(live) > 2:  # row 1 leaves: the last row moves into it
            sampler.move(len(live) - 1, 1)
            live[1] = live.pop()


def test_row_sampler_greedy_with_penalty_matches_the_list_sampler() -> None:
    greedy = [params(temperature=0.0, repetition_penalty=p) for p in (1.0, 1.3, 2.0, 1.1)]
    row_sampler_vs_lists(greedy, steps=3 * REPETITION_WINDOW, seed=0)


def test_row_sampler_seeded_rows_match_the_list_sampler() -> None:
    def make() -> list[SamplingParams]:
        return [
            params(temperature=t, seed=s, top_k=k, top_p=p, repetition_penalty=1.0)
            for t, s, k, p in ((1.0, 1, 0, 1.0), (0.8, 2, 5, 1.0), (1.2, 3, 0, 0.7))
        ]

    # Generators are consumed by sampling: each side gets its own, seeded alike.
    rows_a, rows_b = make(), make()
    torch.manual_seed(0)
    V = 25
    sampler = RowSampler(max_batch=3, device=torch.device("cpu"))
    for r, p in enumerate(rows_a):
        sampler.join(r, p, [])
    generated: list[list[int]] = [[], [], []]
    for _ in range(40):
        logits = torch.randn(3, V) * 2
        got = sampler.sample(logits).tolist()
        assert got == sample_next(logits, rows_b, generated)
        for g, t in zip(generated, got, strict=True):
            g.append(t)


def test_ring_of_recent_tokens_is_the_last_window() -> None:
    sampler = RowSampler(max_batch=1, device=torch.device("cpu"))
    history = list(range(100))
    sampler.join(0, params(), history)
    want = set(recent_ids([history], torch.device("cpu"))[0].tolist())
    assert set(sampler.recent[0].tolist()) == want


def test_banned_tokens_are_never_sampled() -> None:
    logits = torch.zeros(4, 10)
    logits[:, 3] = 50.0  # overwhelmingly likely, and banned
    sampler = RowSampler(max_batch=4, device=torch.device("cpu"), banned=[3])
    for r in range(4):
        sampler.join(r, params(temperature=1.0), [])
    assert 3 not in sampler.sample(logits).tolist()
    assert 3 not in sample_next(logits, [params(temperature=0.0)] * 4, [[]] * 4, banned=[3])
