"""The char-RNN: embedding -> multi-layer GRU -> dropout -> linear head.

The state is the GRU's hidden tensor (L, B, H). Rows never interact, so a batch state is the
per-row hidden states concatenated along dim 1 and a fresh row is a zero vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bot.errors import ModelError
from engine.models import LanguageModel
from engine.models.config import ModelConfig


@dataclass
class GRUSeqState:
    hidden: Tensor  # (L, H)
    length: int

    @property
    def nbytes(self) -> int:
        return self.hidden.numel() * self.hidden.element_size()

    def to_tensors(self) -> dict[str, Tensor]:
        return {"hidden": self.hidden.contiguous(), "length": torch.tensor([self.length])}


@dataclass
class GRUState:
    hidden: Tensor  # (L, B, H)
    lengths: list[int]  # tokens consumed per row

    @property
    def batch_size(self) -> int:
        return len(self.lengths)


class GRUModel(LanguageModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.arch == "gru"
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.rnn = nn.GRU(
            config.n_embd,
            config.n_hidden,
            num_layers=config.n_layer,
            batch_first=True,
            # nn.GRU applies dropout between layers only, and warns if there is just one.
            dropout=config.dropout if config.n_layer > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.n_hidden, config.vocab_size)

    def forward(
        self, tokens: Tensor, state: GRUState | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, GRUState]:
        B, T = tokens.shape
        if state is not None and state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} rows, tokens {B}")
        x = self.wte(tokens)  # (B, T, E)
        y, hidden = self.rnn(x, None if state is None else state.hidden)  # (B, T, H), (L, B, H)
        if last_only:
            y = y[:, -1:]  # (B, 1, H)
        logits = self.lm_head(self.drop(y))  # (B, T, V)
        before = state.lengths if state is not None else [0] * B
        return logits, GRUState(hidden, [n + T for n in before])

    @property
    def max_context(self) -> int | None:
        return None

    def empty_state(self, batch_size: int) -> GRUState:
        cfg = self.config
        hidden = torch.zeros(
            cfg.n_layer, batch_size, cfg.n_hidden, device=self.device, dtype=self.dtype
        )
        return GRUState(hidden, [0] * batch_size)

    def split_state(self, state: GRUState) -> list[GRUSeqState]:
        hidden = state.hidden.detach()
        return [GRUSeqState(hidden[:, b].clone(), n) for b, n in enumerate(state.lengths)]

    def merge_states(self, states: Sequence[GRUSeqState | None]) -> GRUState:
        cfg = self.config
        zeros = torch.zeros(cfg.n_layer, cfg.n_hidden, device=self.device, dtype=self.dtype)
        rows = [zeros if s is None else s.hidden for s in states]
        hidden = torch.stack(rows, dim=1)  # (L, B, H)
        return GRUState(hidden, [0 if s is None else s.length for s in states])

    def state_from_tensors(self, tensors: dict[str, Tensor]) -> GRUSeqState:
        cfg = self.config
        hidden, length = tensors.get("hidden"), tensors.get("length")
        if hidden is None or length is None or length.numel() != 1:
            raise ModelError("GRU state needs 'hidden' and a one-element 'length'")
        if tuple(hidden.shape) != (cfg.n_layer, cfg.n_hidden):
            raise ModelError(
                f"GRU state of shape {tuple(hidden.shape)} does not fit this model "
                f"({cfg.n_layer}, {cfg.n_hidden})"
            )
        return GRUSeqState(hidden.to(self.device, self.dtype), int(length.item()))

    def flops_per_token(self) -> int:
        # 6N (2 forward + 4 backward per multiply-add) over the weights that are multiplied;
        # the embedding is a lookup, not a matmul.
        n_matmul = self.num_params() - self.wte.weight.numel()
        return 6 * n_matmul
