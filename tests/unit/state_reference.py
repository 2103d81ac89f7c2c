"""Reference batch-state surgery, for tests only: split a batch state into per-row states
and merge per-row states back, the slow and obvious way.

Serving never does this (it keeps conversations in slots, :mod:`engine.serve.batches`); the
tests use it to build, from the models' own dynamic path (``model(tokens, state)``), the
expected results that the slot batches and the scheduler must reproduce.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from engine.models import LanguageModel
from engine.models.gru import GRUModel, GRUSeqState, GRUState
from engine.models.transformer import GPT, KVSeqState, KVState

SeqState = GRUSeqState | KVSeqState


def empty_state(model: LanguageModel, batch_size: int) -> GRUState | KVState:
    """A batch state of ``batch_size`` fresh rows (the GPT's goes through its cached path)."""
    return merge_states(model, [None] * batch_size)


def split_state(model: LanguageModel, state: GRUState | KVState) -> list[SeqState]:
    """One detached per-row state per row of ``state``."""
    if isinstance(model, GRUModel):
        assert isinstance(state, GRUState)
        hidden = state.hidden.detach()
        return [GRUSeqState(hidden[:, b].clone(), n) for b, n in enumerate(state.lengths)]
    assert isinstance(state, KVState)
    seqs: list[SeqState] = []
    for b, (n, consumed) in enumerate(zip(state.lengths, state.consumed, strict=True)):
        k = torch.stack([layer[b, :, :n] for layer in state.k]).detach()  # (L, nh, n, hd)
        v = torch.stack([layer[b, :, :n] for layer in state.v]).detach()  # (L, nh, n, hd)
        seqs.append(KVSeqState(k, v, consumed))
    return seqs


def merge_states(model: LanguageModel, states: Sequence[SeqState | None]) -> GRUState | KVState:
    """A batch state from per-row states; ``None`` rows start fresh."""
    cfg, device, dtype = model.config, model.device, model.dtype
    if isinstance(model, GRUModel):
        zeros = torch.zeros(cfg.n_layer, cfg.n_hidden, device=device, dtype=dtype)
        rows = [zeros if s is None else s.hidden for s in states]  # type: ignore[union-attr]
        return GRUState(torch.stack(rows, dim=1), [0 if s is None else s.length for s in states])
    assert isinstance(model, GPT)
    L, nh, hd = cfg.n_layer, cfg.n_head, model.head_dim
    kv = [s for s in states if isinstance(s, KVSeqState) or s is None]
    lengths = [0 if s is None else s.k.shape[2] for s in kv]
    S = max(lengths, default=0)
    empty = torch.zeros(L, nh, 0, hd, device=device, dtype=dtype)

    def padded(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, 0, 0, S - t.shape[2]))  # (L, nh, S, hd), right-padded

    k = torch.stack([padded(empty if s is None else s.k) for s in kv], dim=1)  # (L, B, nh, S, hd)
    v = torch.stack([padded(empty if s is None else s.v) for s in kv], dim=1)
    consumed = [0 if s is None else s.length for s in kv]
    return KVState(list(k.unbind(0)), list(v.unbind(0)), lengths, consumed)
