"""Sampling: a request's options clamped to the admin's bounds, and logits turned into tokens.

A chain of small functions over (B, V) tensors, with per-row parameters as (B,) tensors::

    logits = apply_repetition_penalty(logits, recent_ids, penalty)
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    ids = sample(probs, generators)

:class:`SamplingParams` is one request's options (the one parameters type). :func:`sample_next`
samples any batch from plain lists (a prefill's first token); :class:`RowSampler` is the
decode batch's: each row's options and recent tokens live in device tensors sized for
``max_batch`` rows, set when a row joins and moved when rows are compacted, so a step builds
nothing from Python lists.

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

from bot.settings import SamplingSettings
from bot.wire import Sampling

REPETITION_WINDOW = 64
"""How many of a row's most recent generated tokens the repetition penalty looks at."""
CDF_BLOCK = 64
""":func:`sample` finds the block of this many ids that holds a row's draw, then the id within
it: two short cumulative sums instead of one over the vocabulary (one thread, 64 rows of 4096:
:func:`sample` 91 -> 67 us)."""


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling options, already clamped to the admin's bounds."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 200
    stop: tuple[str, ...] = ()
    generator: torch.Generator | None = field(default=None, compare=False)

    @classmethod
    def from_request(cls, asked: Sampling, bounds: SamplingSettings) -> SamplingParams:
        """The request's options, defaults filled in, each clamped to the settings' bounds."""

        def pick(value: float | None, default: float) -> float:
            return default if value is None else value

        temperature = min(
            max(pick(asked.temperature, bounds.temperature), 0.0), bounds.max_temperature
        )
        max_new = int(pick(asked.max_new_tokens, bounds.max_new_tokens))
        return cls(
            temperature=temperature,
            top_k=max(int(pick(asked.top_k, bounds.top_k)), 0),
            top_p=min(max(pick(asked.top_p, bounds.top_p), 1e-6), 1.0),
            repetition_penalty=min(
                max(pick(asked.repetition_penalty, bounds.repetition_penalty), 1.0), 2.0
            ),
            max_new_tokens=min(max(max_new, 1), bounds.max_new_tokens_limit),
            stop=tuple(s for s in asked.stop[:4] if s),
            generator=make_generator(asked.seed),
        )


def make_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator for a request with a seed; ``None`` (global RNG) for one without."""
    if seed is None:
        return None
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ the chain of steps


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
    p = probs.float()
    if V % CDF_BLOCK:
        p = torch.nn.functional.pad(p, (0, CDF_BLOCK - V % CDF_BLOCK))  # zero mass: never drawn
    blocks = p.view(B, -1, CDF_BLOCK)  # (B, nb, CDF_BLOCK)
    mass = blocks.sum(dim=-1)  # (B, nb)
    cdf = mass.cumsum(dim=-1)  # (B, nb)
    # Scale by the row's total so float error in the sums can never run past the end; the
    # first block, then the first slot in it, whose cdf exceeds the draw has nonzero mass.
    target = u.to(probs.device)[:, None] * cdf[:, -1:]  # (B, 1)
    block = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[1] - 1)  # (B, 1)
    inner = blocks[torch.arange(B, device=p.device), block[:, 0]]  # (B, CDF_BLOCK)
    inner_cdf = inner.cumsum(dim=-1)  # (B, CDF_BLOCK)
    # The draw's place within its block, rescaled to the block's own sum (the same mass).
    within = (target - (cdf.gather(1, block) - mass.gather(1, block))).clamp_(min=0)
    within = within / mass.gather(1, block) * inner_cdf[:, -1:]  # (B, 1)
    slot = torch.searchsorted(inner_cdf, within, right=True).clamp_(max=CDF_BLOCK - 1)
    return (block * CDF_BLOCK + slot).squeeze(1).clamp_(max=V - 1)


def _uniform(generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.rand(())
    return torch.rand((), generator=generator, device=generator.device).cpu()


def temperature_probs(logits: Tensor, temperature: Tensor, any_greedy: bool = True) -> Tensor:
    """:func:`logits_to_probs` for rows without top-k or top-p, minus its sort: (B, V) logits
    -> probabilities at each row's temperature; temperature 0 = a one-hot at the argmax."""
    greedy = temperature <= 0  # (B,)
    t = torch.where(greedy, 1.0, temperature).to(torch.float32)
    probs = (logits.float() / t[:, None]).softmax(dim=-1)  # (B, V)
    if not any_greedy:
        return probs
    one_hot = torch.zeros_like(probs).scatter_(1, logits.argmax(dim=-1, keepdim=True), 1.0)
    return torch.where(greedy[:, None], one_hot, probs)


# ---------------------------------------------------------------------------- whole batches


def recent_ids(generated: Sequence[Sequence[int]], device: torch.device) -> Tensor:
    """(B, W) the last ``REPETITION_WINDOW`` generated ids of each row, padded with -1."""
    width = max(1, min(REPETITION_WINDOW, max((len(g) for g in generated), default=1)))
    rows = [list(g[-width:]) + [-1] * (width - len(g[-width:])) for g in generated]
    return torch.tensor(rows, dtype=torch.long, device=device)


def sample_next(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generated: Sequence[Sequence[int]],
    banned: Sequence[int] = (),
) -> list[int]:
    """(B, V) last-position logits -> the next token of each row, under its own options.

    ``banned`` tokens are never sampled (a benchmark's fixed-length replies ban end-of-turn).
    """
    device = logits.device

    def column(values: list[float] | list[int], dtype: torch.dtype) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    if banned:
        logits = logits.float().index_fill(1, torch.tensor(banned, device=device), -torch.inf)
    if any(p.repetition_penalty != 1.0 for p in params):
        penalty = column([p.repetition_penalty for p in params], torch.float32)
        logits = apply_repetition_penalty(logits, recent_ids(generated, device), penalty)
    temperature = column([p.temperature for p in params], torch.float32)
    if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
        top_k = column([p.top_k for p in params], torch.long)
        probs = logits_to_probs(
            logits, temperature, top_k, column([p.top_p for p in params], torch.float32)
        )
    else:  # no filter: the sort would change nothing (a (B, V) sort, ~1 ms for B = 64 on a CPU)
        probs = temperature_probs(logits, temperature, any(p.temperature <= 0 for p in params))
    ids: list[int] = sample(probs, [p.generator for p in params]).tolist()
    return ids


class RowSampler:
    """Sampling state of a decode batch's rows 0..n-1, on the batch's device."""

    def __init__(self, max_batch: int, device: torch.device, banned: Sequence[int] = ()) -> None:
        def column(fill: float, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.full((max_batch,), fill, dtype=dtype, device=device)

        self.temperature = column(1.0)
        self.top_k = column(0, torch.long)
        self.top_p = column(1.0)
        self.penalty = column(1.0)
        self.recent = torch.full(
            (max_batch, REPETITION_WINDOW), -1, dtype=torch.long, device=device
        )
        """(max_batch, W) a ring of each row's last W sampled ids, -1 where empty."""
        self.cursor = column(0, torch.long)
        """Where each row's next id goes in its ring."""
        self.generators: list[torch.Generator | None] = [None] * max_batch
        self._rows = torch.arange(max_batch, device=device)
        self._banned = torch.tensor(banned, dtype=torch.long, device=device) if banned else None
        self._seeded = [False] * max_batch
        self._penalised = [False] * max_batch
        self._filtered = [False] * max_batch  # top-k or top-p: needs the sort
        self._greedy = [False] * max_batch

    def join(self, row: int, params: SamplingParams, generated: Sequence[int]) -> None:
        """Row ``row`` samples under ``params`` from now on; ``generated`` so far, oldest first."""
        r = params
        self.temperature[row] = r.temperature
        self.top_k[row] = r.top_k
        self.top_p[row] = r.top_p
        self.penalty[row] = r.repetition_penalty
        recent = list(generated[-REPETITION_WINDOW:])
        ring = recent + [-1] * (REPETITION_WINDOW - len(recent))
        self.recent[row] = torch.tensor(ring, dtype=torch.long)
        self.cursor[row] = len(recent) % REPETITION_WINDOW
        self.generators[row] = r.generator
        self._seeded[row] = r.generator is not None
        self._penalised[row] = r.repetition_penalty != 1.0
        self._filtered[row] = r.top_k > 0 or r.top_p < 1.0
        self._greedy[row] = r.temperature <= 0

    def move(self, src: int, dst: int) -> None:
        """Row ``src``'s state moves to row ``dst`` (the batch compacts after a row leaves)."""
        for t in (self.temperature, self.top_k, self.top_p, self.penalty, self.recent, self.cursor):
            t[dst] = t[src]
        self.generators[dst] = self.generators[src]
        for flags in (self._seeded, self._penalised, self._filtered, self._greedy):
            flags[dst] = flags[src]

    def sample(self, logits: Tensor) -> Tensor:
        """(n, V) logits of rows 0..n-1 -> (n,) next ids, each row under its own options."""
        n = logits.shape[0]
        logits = logits.float()
        if self._banned is not None:
            logits = logits.index_fill(1, self._banned, -torch.inf)
        if any(self._penalised[:n]):
            logits = apply_repetition_penalty(logits, self.recent[:n], self.penalty[:n])
        if any(self._filtered[:n]):
            probs = logits_to_probs(logits, self.temperature[:n], self.top_k[:n], self.top_p[:n])
        else:
            probs = temperature_probs(logits, self.temperature[:n], any(self._greedy[:n]))
        # One draw for the whole batch unless a row is seeded (then one per row, from its own).
        generators = self.generators[:n] if any(self._seeded[:n]) else None
        ids = sample(probs, generators)  # (n,)
        self.recent[self._rows[:n], self.cursor[:n]] = ids
        self.cursor[:n] = (self.cursor[:n] + 1) % REPETITION_WINDOW
        return ids
