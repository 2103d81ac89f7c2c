"""Batched sampling with per-row settings: greedy limits, penalties, and seeded determinism."""

from __future__ import annotations

import pytest
import torch

from engine.sampling import (
    BatchSampling,
    RowSampling,
    apply_repetition_penalty,
    logits_to_probs,
    make_generator,
    next_tokens,
    sample,
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


def test_next_tokens_chain() -> None:
    params = BatchSampling.stack(
        [RowSampling(temperature=0.0), RowSampling(top_k=1), RowSampling(), RowSampling()]
    )
    x = logits(5)
    out = next_tokens(x, torch.full((B, 2), -1), params)
    assert out.shape == (B,) and out.dtype == torch.long
    assert out[:2].tolist() == x[:2].argmax(-1).tolist()
    with pytest.raises(ValueError):
        sample(x.softmax(-1), [None])
