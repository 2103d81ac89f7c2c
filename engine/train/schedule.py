"""How training optimizes: the learning-rate schedule, AdamW, one step, and each preset's recipe.

The schedule is a linear warm-up, then cosine decay to ``min_lr``.

A run ends at ``max_steps`` or at its wall-clock budget, whichever comes first, so the decay
follows *progress*: the larger of the step fraction and the time fraction. Under a step
limit alone the schedule (and so the run) is exactly reproducible; under a budget it follows
the clock, and the learning rate still reaches ``min_lr`` just as time runs out, which is
what makes a short budgeted run land on a good model instead of stopping at a high rate.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from engine.models import LanguageModel
from engine.train.evaluate import autocast

log = logging.getLogger(__name__)


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


# ------------------------------------------------------------------------------ one step


def make_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, beta2: float
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains and biases are left alone)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel updates every tensor in one pass instead of ~10 small ops each.
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2), fused=True)


class StepRunner:
    """One optimizer step: accumulate ``len(batches)`` micro-batches, clip, update."""

    def __init__(
        self,
        module: nn.Module,
        model: LanguageModel,
        optimizer: torch.optim.Optimizer,
        *,
        amp_dtype: torch.dtype | None,
        grad_clip: float,
        distributed: bool = False,
        compile_loss: bool = True,
    ) -> None:
        self.module = module  # what forward/backward runs through: compiled and/or DDP
        self.model = model
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype
        self.grad_clip = grad_clip
        self.distributed = distributed
        self.cross_entropy = CompiledLoss() if compile_loss else cross_entropy

    def __call__(self, batches: list[tuple[Tensor, Tensor]], lr: float) -> Tensor:
        """Returns the mean loss as a tensor (no device sync until someone reads it)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.model.device)
        for i, (x, y) in enumerate(batches):
            # DDP all-reduces gradients on every backward unless told to wait for the last.
            last = i == len(batches) - 1
            with self._no_sync() if not last else contextlib.nullcontext():
                loss = self.loss(x, y)
                (loss / len(batches)).backward()  # type: ignore[no-untyped-call]
            total += loss.detach()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / len(batches)

    def _no_sync(self) -> contextlib.AbstractContextManager[Any]:
        """DDP's "accumulate locally, don't all-reduce yet"; nothing to do in one process."""
        if not self.distributed:
            return contextlib.nullcontext()
        ddp_module: DistributedDataParallel = self.module  # type: ignore[assignment]
        return ddp_module.no_sync()

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        with autocast(self.model.device, self.amp_dtype):
            logits, _ = self.module(x)  # (B, T, V)
        return self.cross_entropy(logits, y)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token loss in fp32 over (B, T, V) logits and (B, T) targets."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class CompiledLoss:
    """:func:`cross_entropy` through ``torch.compile``, falling back to eager if that fails.

    Eagerly, the (B*T, V) softmax runs as separate passes (upcast, log-softmax, gather, and
    the same again backwards) over the largest tensor of the step: a quarter of a small
    model's step time on a CPU. Compiled, they fuse into one pass each way; measured +22%
    tokens/s for gpt-small on a 2-core CPU, for ~3 s of compilation. Compiling the whole
    model did not pay on a CPU (oneDNN's matmuls and flash attention already are the kernels
    one wants) — ``--compile`` does that for GPUs.
    """

    def __init__(self) -> None:
        self._compiled: Callable[[Tensor, Tensor], Tensor] | None = torch.compile(
            cross_entropy, dynamic=False
        )

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self._compiled is not None:
            try:
                return self._compiled(logits, targets)
            except Exception as e:  # no C++ compiler, an unsupported platform, ...
                log.warning("compiled loss unavailable (%s); using the eager one", e)
                self._compiled = None
        return cross_entropy(logits, targets)


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
    "gpt-small": Recipe("bpe", 4096, lr=3e-3, batch_size=32, eval_interval=100),
    "gpt": Recipe("bpe", 4096, lr=3e-3, batch_size=32, eval_interval=100),
    "gpt-base": Recipe("bpe", 8192, lr=6e-4, batch_size=16, grad_accum=4),
}
_FALLBACK = {"gru": Recipe("char", 0, lr=2e-3, batch_size=32), "gpt": RECIPES["gpt-small"]}


def recipe_for(preset: str, arch: str) -> Recipe:
    """The preset's recipe; a preset without one gets its architecture's general recipe."""
    return RECIPES.get(preset, _FALLBACK.get(arch, _FALLBACK["gpt"]))
