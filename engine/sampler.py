"""A request's sampling options, clamped to the admin's bounds, and batched next-token choice.

:func:`sample_next` samples any batch from plain lists (a prefill's first token).
:class:`RowSampler` is the decode batch's: each row's options and recent tokens live in
device tensors sized for ``max_batch`` rows, set when a row joins and moved when rows are
compacted, so a step builds nothing from Python lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bot.settings import SamplingSettings
from bot.wire import Sampling
from engine.sampling import (
    BatchSampling,
    RowSampling,
    apply_repetition_penalty,
    logits_to_probs,
    make_generator,
    next_tokens,
    sample,
)

REPETITION_WINDOW = 64
"""How many of a row's most recent generated tokens the repetition penalty looks at."""


@dataclass(frozen=True)
class SamplingParams:
    row: RowSampling
    max_new_tokens: int
    stop: tuple[str, ...]

    @classmethod
    def from_request(cls, asked: Sampling, bounds: SamplingSettings) -> SamplingParams:
        """The request's options, defaults filled in, each clamped to the settings' bounds."""

        def pick(value: float | None, default: float) -> float:
            return default if value is None else value

        temperature = min(
            max(pick(asked.temperature, bounds.temperature), 0.0), bounds.max_temperature
        )
        top_p = min(max(pick(asked.top_p, bounds.top_p), 1e-6), 1.0)
        top_k = max(int(pick(asked.top_k, bounds.top_k)), 0)
        penalty = min(max(pick(asked.repetition_penalty, bounds.repetition_penalty), 1.0), 2.0)
        max_new = int(pick(asked.max_new_tokens, bounds.max_new_tokens))
        max_new = min(max(max_new, 1), bounds.max_new_tokens_limit)
        row = RowSampling(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=penalty,
            generator=make_generator(asked.seed),
        )
        stop = tuple(s for s in asked.stop[:4] if s)
        return cls(row=row, max_new_tokens=max_new, stop=stop)


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
    batch = BatchSampling.stack([p.row for p in params], device=logits.device)
    if banned:
        logits = logits.float().index_fill(
            1, torch.tensor(banned, device=logits.device), -torch.inf
        )
    return next_tokens(logits, recent_ids(generated, logits.device), batch).tolist()  # type: ignore[no-any-return]


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
        r = params.row
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
