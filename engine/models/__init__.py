"""The language models, behind one interface that the trainer, scheduler and cache share.

::

    logits, state = model(tokens, state)       # tokens (B, T) long -> logits (B, T, V)

``state`` is an opaque *batch* state (GRU: hidden tensor; GPT: KV cache + positions); ``None``
means every row starts fresh, which is also the training fast path. ``forward`` may update the
state it is given in place, so a state passed in must not be used again: use the one returned.
Continuous batching builds a batch out of conversations with different histories through
per-sequence states::

    seqs = model.split_state(state)            # one SeqState per row, detached copies
    state = model.merge_states([seqs[0], None, cached])   # None = a fresh conversation
    blob = seqs[0].to_tensors()                # -> safetensors.torch.save(blob) -> Redis
    seq = model.state_from_tensors(blob)       # and back, on the model's device and dtype

The concrete models are :class:`engine.models.gru.GRUModel` and
:class:`engine.models.transformer.GPT`; :func:`build_model` picks one from a config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from engine.models.config import PRESETS, ModelConfig, preset_config

__all__ = [
    "PRESETS",
    "LanguageModel",
    "ModelConfig",
    "SeqState",
    "State",
    "build_model",
    "preset_config",
]

State = Any
"""A batch state; only the model that made it knows what is inside."""


class SeqState(Protocol):
    """One conversation's state: what the context cache keeps between requests."""

    @property
    def length(self) -> int:
        """Tokens this sequence has consumed so far."""
        ...

    @property
    def nbytes(self) -> int: ...

    def to_tensors(self) -> dict[str, Tensor]:
        """Contiguous tensors for ``safetensors.torch.save``; see ``state_from_tensors``."""
        ...


class LanguageModel(nn.Module, ABC):
    """What both architectures provide on top of ``nn.Module``."""

    config: ModelConfig

    @abstractmethod
    def forward(
        self, tokens: Tensor, state: State | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, State]:
        """``tokens`` (B, T) -> logits (B, T, V), or (B, 1, V) with ``last_only``."""

    @property
    @abstractmethod
    def max_context(self) -> int | None:
        """Most tokens the state holds (GPT: ``block_size``); ``None`` = unbounded (GRU)."""

    @abstractmethod
    def empty_state(self, batch_size: int) -> State: ...

    @abstractmethod
    def split_state(self, state: State) -> list[Any]:
        """One detached ``SeqState`` per row, on the model's device."""

    @abstractmethod
    def merge_states(self, states: Sequence[Any | None]) -> State:
        """A batch state from per-row states; ``None`` rows start fresh."""

    @abstractmethod
    def state_from_tensors(self, tensors: dict[str, Tensor]) -> Any:
        """Rebuild a ``SeqState`` from ``to_tensors()``; raises ``ModelError`` if it doesn't fit."""

    @abstractmethod
    def flops_per_token(self) -> int:
        """Approximate forward + backward FLOPs per trained token (for MFU)."""

    def num_params(self) -> int:
        """Parameters, each tied tensor counted once."""
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def build_model(config: ModelConfig) -> LanguageModel:
    """A freshly initialised model for ``config`` (whose ``vocab_size`` must be set)."""
    # Imported here: the model modules import this package for LanguageModel.
    from bot.errors import ModelError
    from engine.models.gru import GRUModel
    from engine.models.transformer import GPT

    if config.vocab_size < 1:
        raise ModelError("model config has no vocab_size; use preset_config(name, vocab_size)")
    if config.arch == "gru":
        return GRUModel(config)
    return GPT(config)
