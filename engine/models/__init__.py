"""The language models, behind one interface that the trainer, scheduler and cache share.

::

    logits, state = model(tokens, state)       # tokens (B, T) long -> logits (B, T, V)

``state`` is an opaque *batch* state (GRU: hidden tensor; GPT: KV cache + positions); ``None``
means every row starts fresh, which is also the training fast path. ``forward`` may update the
state it is given in place, so a state passed in must not be used again: use the one returned.

Serving batches conversations with different histories in *slots*: state buffers for up to
``max_batch`` rows, allocated once (:mod:`engine.serve.batches` drives them)::

    slots = model.new_slots(max_batch)
    model.load_row(slots, row, cached)         # a conversation's SeqState (None: fresh)
    logits = model.prefill_rows(slots, tokens, lengths)   # feed prompt chunks, ragged
    logits = model.decode_step(slots, tokens, positions)  # one token for rows 0..B-1
    seq = model.save_row(slots, row)           # a SeqState copy, for the context cache
    blob = seq.to_tensors()                    # -> safetensors -> Redis, and back:
    seq = model.state_from_tensors(blob)       # on the model's device and dtype

The concrete models are :class:`engine.models.gru.GRUModel` and
:class:`engine.models.transformer.GPT`; :func:`build_model` picks one from a config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from engine.models.config import PRESETS, ModelConfig, preset_config

__all__ = [
    "PRESETS",
    "LanguageModel",
    "ModelConfig",
    "SeqState",
    "Slots",
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


class Slots:
    """State of up to ``max_batch`` rows, preallocated by :meth:`LanguageModel.new_slots`; the
    caller keeps the rows in use at 0..n-1. Each model keeps its own kind of buffers."""

    lengths: list[int]
    """Per row: valid state entries (GPT: the RoPE position of its next token)."""
    consumed: list[int]
    """Per row: tokens fed so far."""

    def advance(self, n: int) -> None:
        """Rows 0..n-1 consumed one more token."""
        for r in range(n):
            self.lengths[r] += 1
            self.consumed[r] += 1


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
    def repeat_state(self, state: State, n: int) -> State:
        """``n`` rows, each continuing the one row of ``state`` (a :meth:`forward` state):
        several continuations of one context, the context computed once."""

    @abstractmethod
    def state_from_tensors(self, tensors: dict[str, Tensor]) -> SeqState:
        """Rebuild a ``SeqState`` from ``to_tensors()``; raises ``ModelError`` if it doesn't fit."""

    # -- serving in slots ------------------------------------------------------------------
    # Slot arguments are the model's own kind (what its new_slots returned).

    @abstractmethod
    def new_slots(self, max_batch: int) -> Slots:
        """Zeroed state buffers for ``max_batch`` rows, on the model's device."""

    @abstractmethod
    def load_row(self, slots: Any, row: int, state: Any | None) -> None:
        """Row ``row`` continues ``state`` (a ``SeqState`` of this model; ``None``: fresh)."""

    @abstractmethod
    def save_row(self, slots: Any, row: int) -> SeqState:
        """A copy of row ``row``'s state."""

    @abstractmethod
    def move_row(self, slots: Any, src: int, dst: int) -> None:
        """Row ``src``'s state moves to row ``dst`` (the batch compacts after a row leaves)."""

    @abstractmethod
    def make_room(self, slots: Any, n: int) -> None:
        """Before a decode step: make room for one more token in each of rows 0..n-1."""

    @abstractmethod
    def decode_step(
        self, slots: Any, tokens: Tensor, positions: Tensor, window: int | None = None
    ) -> Tensor:
        """One token for rows 0..B-1: ``tokens`` (B,) at ``positions`` (B,) -> logits (B, V)
        float32. Static shapes and no host read-back, so a GPU can capture it in a graph;
        ``window`` (optional) bounds how many slots a GPT step attends over."""

    @abstractmethod
    def prefill_rows(self, slots: Any, tokens: Tensor, lengths: list[int]) -> Tensor:
        """Feed row r of rows 0..B-1 its first ``lengths[r]`` of ``tokens`` (B, T), right-padded
        -> logits (B, V) float32 after each row's last token."""

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
