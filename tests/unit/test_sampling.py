"""Sampling (engine/serve/sampling.py): batched with per-row settings (greedy limits,
penalties, seeded determinism); per-request options clamped to the admin's bounds; the decode
batch's row sampler chooses what the list-based sampler chooses, row for row."""

from __future__ import annotations

import pytest
import torch

from bot.settings import SamplingSettings
from bot.wire import Sampling
from engine.serve.sampling import (
    REPETITION_WINDOW,
    RowSampler,
    SamplingParams,
    apply_repetition_penalty,
    logits_to_probs,
    make_generator,
    recent_ids,
    sample,
    sample_next,
    temperature_probs,
)

B, V = 4, 50


def logits(seed: int = 0) -> torch.Tensor:
    return 3 * torch.randn(B, V, generator=torch.Generator().manual_seed(seed))


def rows(value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.full((B,), value, dtype=dtype)


def draw(probs: torch.Tensor, seed: int) -> torch.Tensor:
    return sample(probs, [make_generator(seed + b) for b in range(B)])


def test_top_k_one_is_argmax() -> None:
    x = logits()
    probs = logits_to_probs(x, rows(1.5), rows(1, torch.long), rows(1.0))
    assert torch.equal(probs.argmax(-1), x.argmax(-1))
    assert torch.equal((probs > 0).sum(-1), torch.ones(B, dtype=torch.long))
    for seed in range(5):
        assert torch.equal(draw(probs, seed), x.argmax(-1))


def test_tiny_top_p_is_argmax() -> None:
    x = logits(1)
    probs = logits_to_probs(x, rows(1.0), rows(0, torch.long), rows(1e-6))
    for seed in range(5):
        assert torch.equal(draw(probs, seed), x.argmax(-1))


def test_temperature_zero_is_greedy_per_row() -> None:
    x = logits(2)
    temperature = torch.tensor([0.0, 1.0, 0.0, 1.0])
    probs = logits_to_probs(x, temperature, rows(0, torch.long), rows(1.0))
    assert torch.equal(probs[[0, 2]].argmax(-1), x[[0, 2]].argmax(-1))
    assert torch.equal(probs[[0, 2]].max(-1).values, torch.ones(2))
    torch.testing.assert_close(probs[1], x[1].softmax(-1))


def test_top_k_and_top_p_per_row() -> None:
    x = logits(3)
    top_k = torch.tensor([0, 3, 0, 10])
    top_p = torch.tensor([1.0, 1.0, 0.5, 1.0])
    probs = logits_to_probs(x, rows(1.0), top_k, top_p)
    kept = (probs > 0).sum(-1)
    assert kept[0] == V and kept[1] == 3 and kept[3] == 10
    assert set(probs[1].nonzero().flatten().tolist()) == set(x[1].topk(3).indices.tolist())
    ranked = x[2].softmax(-1).sort(descending=True).values
    n = int(kept[2])  # the smallest prefix whose mass reaches 0.5
    assert ranked[: n - 1].sum() < 0.5 <= ranked[:n].sum()
    torch.testing.assert_close(probs.sum(-1), torch.ones(B))


def test_repetition_penalty_lowers_repeated_tokens_only() -> None:
    x = torch.tensor([[2.0, -2.0, 1.0, 0.5], [2.0, -2.0, 1.0, 0.5]])
    recent = torch.tensor([[0, 1, 0, -1], [-1, -1, -1, -1]])  # row 1: nothing yet
    out = apply_repetition_penalty(x, recent, torch.tensor([2.0, 2.0]))
    assert out[0].tolist() == [1.0, -4.0, 1.0, 0.5]  # penalised once, however often repeated
    assert torch.equal(out[1], x[1])
    same = apply_repetition_penalty(x, recent, torch.tensor([1.0, 1.0]))
    assert torch.equal(same, x)


def test_same_seed_same_samples_whatever_the_batch() -> None:
    probs = logits_to_probs(logits(4), rows(1.0), rows(0, torch.long), rows(1.0))
    a = sample(probs, [make_generator(s) for s in (1, 2, 3, 4)])
    b = sample(probs, [make_generator(s) for s in (1, 2, 3, 4)])
    assert torch.equal(a, b)
    # Row 2's draw depends on its own generator only, not on its neighbours or position.
    alone = sample(probs[2:3], [make_generator(3)])
    assert int(alone) == int(a[2])
    gens = [make_generator(7) for _ in range(B)]
    seq1 = [sample(probs, gens) for _ in range(20)]
    gens = [make_generator(7) for _ in range(B)]
    seq2 = [sample(probs, gens) for _ in range(20)]
    assert all(torch.equal(p, q) for p, q in zip(seq1, seq2, strict=True))
    assert len({tuple(t.tolist()) for t in seq1}) > 1  # a generator advances


def test_samples_follow_the_distribution() -> None:
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75]])
    gen = make_generator(0)
    counts = torch.bincount(torch.cat([sample(probs, [gen]) for _ in range(2000)]), minlength=4)
    assert counts[0] == counts[2] == 0
    assert 0.70 < counts[3] / 2000 < 0.80


def test_samples_follow_the_distribution_across_cdf_blocks() -> None:
    # Mass in three of four blocks of 64 ids (200 padded to 256), none in the padding.
    probs = torch.zeros(1, 200)
    probs[0, [5, 70, 199]] = torch.tensor([0.2, 0.3, 0.5])
    gen = make_generator(1)
    drawn = torch.cat([sample(probs, [gen]) for _ in range(3000)])
    counts = torch.bincount(drawn, minlength=200)
    assert counts.sum() == counts[[5, 70, 199]].sum() == 3000
    for token, p in ((5, 0.2), (70, 0.3), (199, 0.5)):
        assert abs(counts[token] / 3000 - p) < 0.04


def test_sample_next_chain() -> None:
    rows = [SamplingParams(temperature=0.0), SamplingParams(top_k=1)]
    rows += [SamplingParams(), SamplingParams()]
    x = logits(5)
    out = sample_next(x, rows, [[], [], [], []])
    assert len(out) == B and all(isinstance(t, int) for t in out)
    assert out[:2] == x[:2].argmax(-1).tolist()
    with pytest.raises(ValueError):
        sample(x.softmax(-1), [None])


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
    assert (p.temperature, p.top_k, p.top_p) == (0.7, 40, 0.9)
    assert (p.repetition_penalty, p.max_new_tokens, p.stop) == (1.2, 100, ())
    assert p.generator is None


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
    assert getattr(params(**asked), field) == pytest.approx(expected)


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
