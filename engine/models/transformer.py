"""A small GPT: pre-norm blocks, RoPE, tied embeddings, SDPA attention, and a KV cache.

Two paths through the same weights:

* ``model(tokens, None)`` with ``T <= block_size``: full causal attention, no cache to fill
  (training, and a fresh prefill). The returned state just keeps the keys and values that
  attention computed anyway.
* ``model(tokens, state)``: incremental, for prefill chunks and decode steps of any size.

The KV cache, per layer, is a right-padded buffer ``(B, n_head, S, head_dim)``. Row ``b`` holds
``lengths[b]`` valid entries at slots ``0 .. lengths[b]-1``, and its next token goes to slot
(and RoPE position) ``lengths[b]``. A step writes each row's new keys at its own positions with
one ``scatter_`` and attends under a mask ``slot <= position``, which hides both the future and
the junk past a row's end. Given a fixed capacity ``S`` every tensor in a decode step has a
static shape, so the step can later be captured in a CUDA graph; only ``lengths`` changes.

Keys are cached already rotated. When a row would outgrow ``block_size`` it keeps its first
``attn_sinks`` entries (attention sinks, as in StreamingLLM) and the most recent ones, and the
kept recent keys are rotated back by the gap, so cache positions stay ``0 .. length-1`` and the
model never sees a distance longer than it was trained on. Eviction frees a quarter window at a
time so it is rare during decode. Within ``block_size`` tokens, chunked and one-shot prefill
give the same logits; past it, results depend on where the window slid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bot.errors import ModelError
from engine.models import LanguageModel
from engine.models.config import ModelConfig

log = logging.getLogger(__name__)

_CAPACITY_STEP = 64
"""The cache grows by whole multiples of this, so decode reallocates every 64 tokens at most."""


@dataclass
class KVSeqState:
    k: Tensor  # (n_layer, n_head, t, head_dim), rotated keys at positions 0..t-1
    v: Tensor  # (n_layer, n_head, t, head_dim)
    length: int  # tokens consumed; more than t once the window has slid

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def to_tensors(self) -> dict[str, Tensor]:
        return {
            "k": self.k.contiguous(),
            "v": self.v.contiguous(),
            "length": torch.tensor([self.length]),
        }


@dataclass
class KVState:
    k: list[Tensor]  # n_layer x (B, n_head, S, head_dim); slots >= lengths[b] are junk
    v: list[Tensor]
    lengths: list[int]  # valid cache entries per row = RoPE position of its next token
    consumed: list[int]  # tokens fed per row

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]


# ------------------------------------------------------------------------------------ blocks


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin, (B, 1, T, head_dim), for integer ``positions`` (B, T); negative is fine."""
    # Computed in float32 each call rather than kept as a buffer that .to(bf16) would round.
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = theta ** (-exponent / head_dim)  # (hd/2,)
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, hd/2)
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hd)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + hd/2) of ``x`` (..., T, hd) by the angles in cos/sin."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


@dataclass
class _CacheStep:
    """What every layer needs to read and write its KV cache for one cached forward."""

    index: Tensor  # (B, n_head, T, head_dim) long: the slot of each new key
    mask: Tensor  # (B, 1, T, S) bool: True where a query may attend


def _norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: tuple[Tensor, Tensor] | None,
        step: _CacheStep | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """-> (output (B, T, C), this step's rotated keys, its values)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            assert step is not None
            k_cache, v_cache = cache  # (B, nh, S, hd), updated in place
            k_cache.scatter_(2, step.index, k)
            v_cache.scatter_(2, step.index, v)
            y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=step.mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y)), k, v


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)
        return y


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: tuple[Tensor, Tensor] | None = None,
        step: _CacheStep | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attn(self.ln_1(x), cos, sin, cache, step)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, k, v


# ------------------------------------------------------------------------------------- model


class GPT(LanguageModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.arch == "gpt"
        self.config = config
        self.head_dim = config.n_embd // config.n_head
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = _norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one matrix reads and writes tokens
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections so the stream's variance doesn't grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def max_context(self) -> int:
        return self.config.block_size

    def forward(
        self, tokens: Tensor, state: KVState | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, KVState]:
        B, T = tokens.shape
        if state is None and tokens.shape[1] <= self.config.block_size:  # the training path
            return self._forward_full(tokens, last_only)
        state = state if state is not None else self.empty_state(B)
        if state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} rows, tokens {B}")
        # Chunks small enough that evicting down to the sinks always makes room for one.
        chunk = self.config.block_size - self.config.attn_sinks
        logits = []
        for start in range(0, T, chunk):
            piece = tokens[:, start : start + chunk]
            is_last = start + chunk >= T
            self._make_room(state, piece.shape[1])
            logits.append(self._forward_cached(piece, state, last_only and is_last))
        return (logits[-1] if last_only else torch.cat(logits, dim=1)), state

    def _forward_full(self, tokens: Tensor, last_only: bool) -> tuple[Tensor, KVState]:
        B, T = tokens.shape
        positions = torch.arange(T, device=tokens.device)[None]  # (1, T)
        cos, sin = rope_cos_sin(positions, self.head_dim, self.config.rope_theta)
        x = self.drop(self.wte(tokens))  # (B, T, C)
        ks, vs = [], []
        for block in self.h:
            x, k, v = block(x, cos, sin)
            ks.append(k.detach())
            vs.append(v.detach())
        state = KVState(ks, vs, lengths=[T] * B, consumed=[T] * B)
        return self._logits(x, last_only), state

    def _forward_cached(self, tokens: Tensor, state: KVState, last_only: bool) -> Tensor:
        B, T = tokens.shape
        nh, hd = self.config.n_head, self.head_dim
        self._ensure_capacity(state, max(state.lengths) + T)
        S = state.capacity
        start = torch.tensor(state.lengths, device=tokens.device)  # (B,)
        positions = start[:, None] + torch.arange(T, device=tokens.device)  # (B, T)
        slots = torch.arange(S, device=tokens.device)  # (S,)
        step = _CacheStep(
            index=positions[:, None, :, None].expand(B, nh, T, hd),
            mask=(slots[None, None, :] <= positions[:, :, None])[:, None],  # (B, 1, T, S)
        )
        cos, sin = rope_cos_sin(positions, hd, self.config.rope_theta)
        x = self.drop(self.wte(tokens))  # (B, T, C)
        for i, block in enumerate(self.h):
            x, _, _ = block(x, cos, sin, (state.k[i], state.v[i]), step)
        state.lengths = [n + T for n in state.lengths]
        state.consumed = [n + T for n in state.consumed]
        return self._logits(x, last_only)

    def _logits(self, x: Tensor, last_only: bool) -> Tensor:
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        logits: Tensor = self.lm_head(self.ln_f(x))  # (B, T, V)
        return logits

    # ------------------------------------------------------------------------- the cache

    def _ensure_capacity(self, state: KVState, needed: int) -> None:
        S = state.capacity
        if needed <= S:
            return
        rounded = -(-needed // _CAPACITY_STEP) * _CAPACITY_STEP
        new_S = max(needed, min(rounded, self.config.block_size))
        for kv in (state.k, state.v):
            for i, old in enumerate(kv):
                B, nh, _, hd = old.shape
                grown = old.new_zeros(B, nh, new_S, hd)
                grown[:, :, :S] = old
                kv[i] = grown

    def _make_room(self, state: KVState, n_new: int) -> None:
        """Slide the window of every row that has no room for ``n_new`` more tokens."""
        block, sinks = self.config.block_size, self.config.attn_sinks
        slack = block // 4  # free more than needed, so decode evicts once per quarter window
        for b, n in enumerate(state.lengths):
            if n + n_new > block:
                self._evict(state, b, keep=max(sinks, block - n_new - slack))

    def _evict(self, state: KVState, b: int, keep: int) -> None:
        """Keep row ``b``'s first ``attn_sinks`` entries and its most recent, ``keep`` in all."""
        sinks, n = self.config.attn_sinks, state.lengths[b]
        n_recent = keep - sinks
        src = n - n_recent
        # The kept keys move from positions src.. to sinks..; rotate them back by the gap.
        gap = torch.tensor([[sinks - src]], device=state.k[0].device)  # (1, 1)
        cos, sin = rope_cos_sin(gap, self.head_dim, self.config.rope_theta)  # (1, 1, 1, hd)
        for k, v in zip(state.k, state.v, strict=True):
            k[b, :, sinks:keep] = apply_rope(k[b, :, src:n], cos[0], sin[0])
            v[b, :, sinks:keep] = v[b, :, src:n].clone()  # source and target may overlap
        state.lengths[b] = keep
        log.debug("kv cache: row %d slid its window, %d -> %d entries", b, n, keep)

    def empty_state(self, batch_size: int) -> KVState:
        shape = (batch_size, self.config.n_head, 0, self.head_dim)  # (B, nh, S=0, hd)
        empty = torch.zeros(shape, device=self.device, dtype=self.dtype)
        L = self.config.n_layer
        return KVState(
            k=[empty.clone() for _ in range(L)],
            v=[empty.clone() for _ in range(L)],
            lengths=[0] * batch_size,
            consumed=[0] * batch_size,
        )

    def split_state(self, state: KVState) -> list[KVSeqState]:
        seqs = []
        for b, (n, consumed) in enumerate(zip(state.lengths, state.consumed, strict=True)):
            k = torch.stack([layer[b, :, :n] for layer in state.k]).detach()  # (L, nh, n, hd)
            v = torch.stack([layer[b, :, :n] for layer in state.v]).detach()  # (L, nh, n, hd)
            seqs.append(KVSeqState(k, v, consumed))
        return seqs

    def merge_states(self, states: Sequence[KVSeqState | None]) -> KVState:
        if not states:
            raise ValueError("merge_states needs at least one row")
        L, nh, hd = self.config.n_layer, self.config.n_head, self.head_dim
        lengths = [0 if s is None else s.k.shape[2] for s in states]
        S = max(lengths, default=0)
        empty = torch.zeros(L, nh, 0, hd, device=self.device, dtype=self.dtype)

        def padded(t: Tensor) -> Tensor:
            return F.pad(t, (0, 0, 0, S - t.shape[2]))  # (L, nh, S, hd), right-padded

        # One pad per row and one stack, with the layer axis first so each layer's
        # (B, nh, S, hd) buffer is a contiguous slice.
        k = torch.stack([padded(empty if s is None else s.k) for s in states], dim=1)
        v = torch.stack([padded(empty if s is None else s.v) for s in states], dim=1)
        return KVState(
            k=list(k.unbind(0)),
            v=list(v.unbind(0)),
            lengths=lengths,
            consumed=[0 if s is None else s.length for s in states],
        )

    def state_from_tensors(self, tensors: dict[str, Tensor]) -> KVSeqState:
        cfg = self.config
        k, v, length = tensors.get("k"), tensors.get("v"), tensors.get("length")
        if k is None or v is None or length is None or length.numel() != 1:
            raise ModelError("KV state needs 'k', 'v' and a one-element 'length'")
        expected = (cfg.n_layer, cfg.n_head, self.head_dim)
        if (
            k.shape != v.shape
            or k.dim() != 4
            or (k.shape[0], k.shape[1], k.shape[3]) != expected
            or k.shape[2] > cfg.block_size
        ):
            raise ModelError(
                f"KV state of shape {tuple(k.shape)} does not fit this model "
                f"(n_layer, n_head, <= {cfg.block_size}, head_dim) = {expected}"
            )
        return KVSeqState(
            k.to(self.device, self.dtype), v.to(self.device, self.dtype), int(length.item())
        )

    def flops_per_token(self) -> int:
        # nanoGPT / PaLM appendix B: 6N for the weights (the tied embedding counted once, as
        # the head's matmul) plus 12 * L * d * T for attention scores over a full window.
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
