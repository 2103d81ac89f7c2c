"""Turning a batch of next-token logits into tokens, each row with its own settings.

A chain of small functions over (B, V) tensors, with per-row parameters as (B,) tensors::

    logits = apply_repetition_penalty(logits, recent_ids, penalty)
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    ids = sample(probs, generators)

Determinism: :func:`sample` draws exactly one uniform number per row, from that row's own
``torch.Generator``, and picks the token by inverse CDF. A request seeded with ``seed`` gets
the same tokens whichever batch it shares and whichever row it sits in (up to float
differences in the logits themselves). A row with temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


def apply_repetition_penalty(logits: Tensor, recent_ids: Tensor, penalty: Tensor) -> Tensor:
    """CTRL's penalty on recently generated tokens: divide a positive logit, multiply a negative.

    logits (B, V); recent_ids (B, W) long, padded with -1; penalty (B,), 1.0 = off.
    Each token is penalised once however often it recurs.
    """
    B, V = logits.shape
    # Padding points at a spare column V that is dropped again, so it marks nothing.
    ids = torch.where(recent_ids < 0, V, recent_ids)  # (B, W)
    seen = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device)
    seen = seen.scatter_(1, ids, True)[:, :V]  # (B, V)
    p = penalty.to(logits.dtype)[:, None]  # (B, 1)
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def logits_to_probs(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
    """(B, V) logits -> (B, V) probabilities.

    Per row: temperature 0 = greedy (a one-hot at the argmax); top_k 0 = off; top_p 1.0 = off
    (keep the smallest set of most likely tokens whose mass reaches top_p).
    """
    V = logits.shape[1]
    greedy = temperature <= 0  # (B,)
    t = torch.where(greedy, 1.0, temperature).to(torch.float32)
    scaled = logits.float() / t[:, None]  # (B, V)
    # One stable sort serves top-k, top-p and the argmax (ties go to the lower id, as argmax).
    sorted_logits, order = scaled.sort(dim=-1, descending=True, stable=True)  # (B, V)
    rank = torch.arange(V, device=logits.device)  # (V,)
    k = torch.where(top_k > 0, top_k.clamp(max=V), V)  # (B,)
    drop = rank[None, :] >= k[:, None]  # (B, V), in sorted order
    sorted_probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V)
    # The first token always stays: its mass_before is 0.
    drop |= (mass_before > top_p[:, None]) & (top_p[:, None] < 1.0)
    kept = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)  # (B, V)
    probs = torch.zeros_like(kept).scatter_(1, order, kept)
    one_hot = torch.zeros_like(kept).scatter_(1, order[:, :1], 1.0)
    return torch.where(greedy[:, None], one_hot, probs)


def sample(probs: Tensor, generators: Sequence[torch.Generator | None] | None = None) -> Tensor:
    """(B, V) probabilities -> (B,) token ids, one uniform draw per row from its generator.

    A ``None`` generator (or ``generators=None``) uses torch's global RNG. Generators may live
    on the CPU whatever device ``probs`` is on; the B draws are copied over in one go.
    """
    B, V = probs.shape
    if generators is None:
        u = torch.rand(B)
    else:
        if len(generators) != B:
            raise ValueError(f"{len(generators)} generators for {B} rows")
        u = torch.stack([_uniform(g) for g in generators])
    cdf = probs.float().cumsum(dim=-1)  # (B, V)
    # Scale by the row's total so float error in the cumsum can never run past the end;
    # the first slot whose cdf exceeds u then always has nonzero probability.
    u = u.to(probs.device)[:, None] * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=V - 1)


def _uniform(generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.rand(())
    return torch.rand((), generator=generator, device=generator.device).cpu()


def make_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator for a request with a seed; ``None`` (global RNG) for one without."""
    if seed is None:
        return None
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- the whole chain


@dataclass(frozen=True)
class RowSampling:
    """One request's settings, already clamped to the admin's bounds."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    generator: torch.Generator | None = field(default=None, compare=False)


@dataclass(frozen=True)
class BatchSampling:
    """Per-row settings as (B,) tensors, built once per batch composition."""

    temperature: Tensor  # (B,) float
    top_k: Tensor  # (B,) long
    top_p: Tensor  # (B,) float
    repetition_penalty: Tensor  # (B,) float
    generators: list[torch.Generator | None]

    @classmethod
    def stack(
        cls, rows: Sequence[RowSampling], device: str | torch.device = "cpu"
    ) -> BatchSampling:
        def column(values: list[float] | list[int], dtype: torch.dtype) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(
            temperature=column([r.temperature for r in rows], torch.float32),
            top_k=column([r.top_k for r in rows], torch.long),
            top_p=column([r.top_p for r in rows], torch.float32),
            repetition_penalty=column([r.repetition_penalty for r in rows], torch.float32),
            generators=[r.generator for r in rows],
        )


def next_tokens(logits: Tensor, recent_ids: Tensor | None, params: BatchSampling) -> Tensor:
    """(B, V) last-position logits -> (B,) next token ids."""
    if recent_ids is not None:
        logits = apply_repetition_penalty(logits, recent_ids, params.repetition_penalty)
    probs = logits_to_probs(logits, params.temperature, params.top_k, params.top_p)
    return sample(probs, params.generators)
