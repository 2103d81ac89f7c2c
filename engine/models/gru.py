"""The char-RNN: embedding -> multi-layer GRU -> dropout -> linear head.

The state is the GRU's hidden tensor (L, B, H). Rows never interact, so a batch state is the
per-row hidden states concatenated along dim 1 and a fresh row is a zero vector.

Serving decodes through :class:`GRUSlots` instead: one preallocated (L, max_batch, H) hidden
buffer whose rows conversations join and leave one row at a time, and :meth:`decode_step`,
the same cell as ``nn.GRU`` written out so a step has static shapes (CUDA-graph capturable)
and the first layer's input projection is a table lookup (the embedding is folded into it).
A prompt (a new message, or a whole history recomputed after a cache miss) goes through
``nn.GRU``'s fused sequence kernel instead, a chunk of every prefilling row at once
(:meth:`GRUModel.prefill_rows`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from bot.errors import ModelError
from engine.models import LanguageModel, Slots
from engine.models.config import ModelConfig


@dataclass(frozen=True)
class _Float32Copy:
    """A float32 copy of a bf16 serving copy's ``nn.GRU`` for prefill, held outside the
    module's children so it is neither a parameter nor part of a checkpoint."""

    rnn: nn.GRU


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


@dataclass
class GRUSlots(Slots):
    """Decode state of up to ``max_batch`` rows; the caller keeps active rows at 0..n-1."""

    hidden: Tensor  # (L, max_batch, H) float32 even under bf16 weights: it is carried forever
    table: Tensor  # (V, 3H) float32: wte @ W_ih0^T + b_ih0, layer 0's input gates per token
    lengths: list[int]  # tokens consumed per row (a GRU has no positions)
    consumed: list[int]


def _gru_cell(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """``nn.GRU``'s update from input gates gi and hidden gates gh, both (B, 3H), order r|z|n."""
    H = h.shape[1]
    rz = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H])  # (B, 2H): both gates in one op
    r, z = rz[:, :H], rz[:, H:]
    a = torch.addcmul(gi[:, 2 * H :], r, gh[:, 2 * H :])  # i_n + r * h_n
    n = torch.sigmoid(2 * a).mul_(2).sub_(1)  # tanh(a); torch.tanh is ~4x slower on CPU
    return torch.lerp(n, h, z)  # (1 - z) * n + z * h


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
        self._rnn32: _Float32Copy | None = None  # see _float32_rnn

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

    def repeat_state(self, state: GRUState, n: int) -> GRUState:
        if state.batch_size != 1:
            raise ValueError(f"repeat_state takes a one-row state, not {state.batch_size} rows")
        return GRUState(state.hidden.expand(-1, n, -1).contiguous(), state.lengths * n)  # (L, n, H)

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

    # ------------------------------------------------------------------ slot-based decode

    def new_slots(self, max_batch: int) -> GRUSlots:
        cfg = self.config
        hidden = torch.zeros(cfg.n_layer, max_batch, cfg.n_hidden, device=self.device)
        w_ih, b_ih = self.rnn.weight_ih_l0.float(), self.rnn.bias_ih_l0.float()
        table = self.wte.weight.float() @ w_ih.T + b_ih  # (V, 3H)
        return GRUSlots(hidden, table, [0] * max_batch, [0] * max_batch)

    def load_row(self, slots: GRUSlots, row: int, state: GRUSeqState | None) -> None:
        """Row ``row`` continues ``state`` (``None``: a fresh conversation); O(one row)."""
        if state is None:
            slots.hidden[:, row].zero_()
        else:
            slots.hidden[:, row].copy_(state.hidden)
        slots.lengths[row] = slots.consumed[row] = 0 if state is None else state.length

    def save_row(self, slots: GRUSlots, row: int) -> GRUSeqState:
        return GRUSeqState(slots.hidden[:, row].clone(), slots.consumed[row])

    def move_row(self, slots: GRUSlots, src: int, dst: int) -> None:
        slots.hidden[:, dst].copy_(slots.hidden[:, src])
        slots.lengths[dst], slots.consumed[dst] = slots.lengths[src], slots.consumed[src]

    def make_room(self, slots: GRUSlots, n: int) -> None:
        """Nothing to do: a GRU's state does not grow."""

    def decode_step(
        self, slots: GRUSlots, tokens: Tensor, positions: Tensor, window: int | None = None
    ) -> Tensor:
        """One token for rows 0..B-1: ``tokens`` (B,) -> logits (B, V) float32.

        Updates the rows' hidden state in place. Every shape depends on B only, and nothing
        reads back to the host, so the step can be captured in a CUDA graph. ``positions`` and
        ``window`` are the GPT's and unused here.
        """
        x = self._cell_step(slots, tokens)
        return self._head(x)

    def prefill_rows(self, slots: GRUSlots, tokens: Tensor, lengths: list[int]) -> Tensor:
        """Feed row r of rows 0..B-1 its first ``lengths[r]`` of ``tokens`` (B, T), right-padded.

        -> logits (B, V) after each row's last token. The whole chunk goes through
        ``nn.GRU``'s fused sequence kernel (~4x faster per timestep on CPU than a step at a
        time), in float32 as the decode step's hidden state is; rows of different lengths are
        packed, so each stops at its own end.
        """
        B, T = tokens.shape
        x = F.embedding(tokens, self.wte.weight).float()  # (B, T, E)
        seq: Tensor | PackedSequence = x
        if min(lengths) != T:
            seq = pack_padded_sequence(x, torch.tensor(lengths), True, enforce_sorted=False)
        h0 = slots.hidden[:, :B].contiguous()  # (L, B, H)
        _, hidden = self._float32_rnn()(seq, h0)  # (L, B, H), each row after its last token
        slots.hidden[:, :B] = hidden
        for r, n in enumerate(lengths):
            slots.lengths[r] += n
            slots.consumed[r] += n
        return self._head(hidden[-1])

    def _float32_rnn(self) -> nn.GRU:
        """``self.rnn``, or (a bf16 serving copy) a float32 copy of it, made once."""
        if self.rnn.weight_hh_l0.dtype == torch.float32:
            return self.rnn
        if self._rnn32 is None:
            self._rnn32 = _Float32Copy(copy.deepcopy(self.rnn).float().eval())
        return self._rnn32.rnn

    def _cell_step(self, slots: GRUSlots, tokens: Tensor) -> Tensor:
        """Rows 0..B-1 take ``tokens`` (B,) -> the last layer's new hidden state (B, H)."""
        B = tokens.shape[0]
        gi = slots.table[tokens]  # (B, 3H): embedding and layer 0's input projection at once
        x = gi
        for layer in range(self.config.n_layer):
            w_hh = getattr(self.rnn, f"weight_hh_l{layer}")
            b_hh = getattr(self.rnn, f"bias_hh_l{layer}")
            if layer > 0:
                w_ih = getattr(self.rnn, f"weight_ih_l{layer}")
                b_ih = getattr(self.rnn, f"bias_ih_l{layer}")
                gi = F.linear(x.to(w_ih.dtype), w_ih, b_ih).float()  # (B, 3H)
            h = slots.hidden[layer, :B]  # (B, H), a view: updated in place below
            gh = F.linear(h.to(w_hh.dtype), w_hh, b_hh).float()  # (B, 3H)
            x = _gru_cell(gi, gh, h)
            h.copy_(x)
        return x

    def _head(self, x: Tensor) -> Tensor:
        head = self.lm_head.weight
        logits: Tensor = F.linear(x.to(head.dtype), head, self.lm_head.bias)  # (B, V)
        return logits.float()

    def flops_per_token(self) -> int:
        # 6N (2 forward + 4 backward per multiply-add) over the weights that are multiplied;
        # the embedding is a lookup, not a matmul.
        n_matmul = self.num_params() - self.wte.weight.numel()
        return 6 * n_matmul
