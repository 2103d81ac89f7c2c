"""A request's sampling options, clamped to the admin's bounds, and batched next-token choice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bot.settings import SamplingSettings
from bot.wire import Sampling
from engine.sampling import BatchSampling, RowSampling, make_generator, next_tokens

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

        temperature = min(max(pick(asked.temperature, bounds.temperature), 0.0), bounds.max_temperature)
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
    logits: Tensor, params: Sequence[SamplingParams], generated: Sequence[Sequence[int]]
) -> list[int]:
    """(B, V) last-position logits -> the next token of each row, under its own options."""
    batch = BatchSampling.stack([p.row for p in params], device=logits.device)
    return next_tokens(logits, recent_ids(generated, logits.device), batch).tolist()  # type: ignore[no-any-return]
