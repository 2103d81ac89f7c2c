"""The learning-rate schedule: linear warm-up, then cosine decay to ``min_lr``.

A run ends at ``max_steps`` or at its wall-clock budget, whichever comes first, so the decay
follows *progress*: the larger of the step fraction and the time fraction. Under a step
limit alone the schedule (and so the run) is exactly reproducible; under a budget it follows
the clock, and the learning rate still reaches ``min_lr`` just as time runs out, which is
what makes a short budgeted run land on a good model instead of stopping at a high rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int | None
    budget_s: float | None

    def __post_init__(self) -> None:
        if self.max_steps is None and self.budget_s is None:
            raise ValueError("a schedule needs max_steps, budget_s, or both")

    def progress(self, step: int, elapsed_s: float) -> float:
        """How far through the run we are, in [0, 1]."""
        fractions = [0.0]
        if self.max_steps:
            fractions.append(step / self.max_steps)
        if self.budget_s:
            fractions.append(elapsed_s / self.budget_s)
        return min(1.0, max(fractions))

    def learning_rate(self, step: int, elapsed_s: float) -> float:
        """The rate for optimizer step ``step`` (0-based) at ``elapsed_s`` into the run."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay = 0.5 * (1.0 + math.cos(math.pi * self.progress(step, elapsed_s)))  # 1 -> 0
        return self.min_lr + (self.lr - self.min_lr) * decay

    def done(self, step: int, elapsed_s: float) -> bool:
        if self.max_steps is not None and step >= self.max_steps:
            return True
        return self.budget_s is not None and elapsed_s >= self.budget_s


# ------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """How a preset trains best on a small machine: tokenizer, batch and rate (measured)."""

    tokenizer: str
    vocab_size: int
    lr: float
    batch_size: int
    grad_accum: int = 1
    warmup_steps: int = 100
    eval_interval: int = 250


RECIPES: dict[str, Recipe] = {
    "seed": Recipe("char", 0, lr=2e-3, batch_size=32),
    "gru-small": Recipe("char", 0, lr=3e-3, batch_size=32),
    "gru": Recipe("char", 0, lr=2e-3, batch_size=32),
    "gru-large": Recipe("char", 0, lr=1e-3, batch_size=32),
    "gpt-tiny": Recipe("bpe", 2048, lr=3e-3, batch_size=32),
    "gpt-small": Recipe("bpe", 4096, lr=2e-3, batch_size=32),
    "gpt": Recipe("bpe", 4096, lr=1e-3, batch_size=32),
    "gpt-base": Recipe("bpe", 8192, lr=6e-4, batch_size=16, grad_accum=4),
}
_FALLBACK = {"gru": Recipe("char", 0, lr=2e-3, batch_size=32), "gpt": RECIPES["gpt-small"]}


def recipe_for(preset: str, arch: str) -> Recipe:
    """The preset's recipe; a preset without one gets its architecture's general recipe."""
    return RECIPES.get(preset, _FALLBACK.get(arch, _FALLBACK["gpt"]))
