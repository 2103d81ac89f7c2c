"""A small GPT: pre-norm blocks, RoPE, tied embeddings, SDPA attention, and a KV cache.

With ``rmsnorm``, ``swiglu`` and no biases (the presets) the layout is Llama's, RoPE included
(channel pairs (i, i + head_dim/2), as ``rotate_half`` in transformers), so `parley export`
maps the weights one to one; ``gelu`` (GPT-2's MLP) loads checkpoints made before that.

Two paths through the same weights:

* ``model(tokens, None)`` with ``T <= block_size``: full causal attention, no cache to fill
  (training, and a fresh prefill). The returned state just keeps the keys and values that
  attention computed anyway.
* ``model(tokens, state)``: incremental, for prefill chunks and decode steps of any size.

The KV cache, per layer, is a right-padded buffer ``(B, n_head, S, head_dim)``. Row ``b`` holds
``lengths[b]`` valid entries at slots ``0 .. lengths[b]-1``, and its next token goes to slot
(and RoPE position) ``lengths[b]``. A step writes each row's new keys at its own positions with
one ``index_put_`` and attends under a mask ``slot <= position``, which hides both the future and
the junk past a row's end. Given a fixed capacity ``S`` every tensor in a decode step has a
static shape, so the step can later be captured in a CUDA graph; only ``lengths`` changes.

Keys are cached already rotated. When a row would outgrow ``block_size`` it keeps its first
``attn_sinks`` entries (attention sinks, as in StreamingLLM) and the most recent ones, and the
kept recent keys are rotated back by the gap, so cache positions stay ``0 .. length-1`` and the
model never sees a distance longer than it was trained on. Eviction frees a quarter window at a
time so it is rare during decode. Within ``block_size`` tokens, chunked and one-shot prefill
give the same logits; past it, results depend on where the window slid.

Serving decodes through :class:`KVSlots` instead of batch states: one cache of
``max_batch`` rows, which a conversation joins by copying its prefix into a free row and
leaves by freeing it (O(that row), never O(batch)). On a GPU it holds ``block_size`` slots per
row from the start (static shapes for CUDA graphs); on a CPU as many as the longest row in use
needs, rounded up to 64, so a step reads one contiguous block and no unused slots.
:meth:`GPT.decode_step` runs rows 0..B-1 through the same cached attention as a prefill chunk.
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
from engine.models import LanguageModel, Slots
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


@dataclass
class KVSlots(Slots):
    """A KV cache for up to ``max_batch`` rows; active rows are 0..n-1."""

    k: Tensor  # (n_layer, max_batch, n_head, S, head_dim), rotated keys; S <= block_size
    v: Tensor  # (n_layer, max_batch, n_head, S, head_dim)
    lengths: list[int]  # valid entries per row = RoPE position of its next token
    consumed: list[int]  # tokens fed per row

    def as_state(self) -> KVState:
        """A :class:`KVState` view of every row (writes go to these buffers)."""
        return KVState(list(self.k.unbind(0)), list(self.v.unbind(0)), self.lengths, self.consumed)


# ------------------------------------------------------------------------------------ blocks


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin, (B, 1, T, head_dim), for integer ``positions`` (B, T); negative is fine."""
    # Computed in float32 each call rather than kept as a buffer that .to(bf16) would round.
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = theta ** (-exponent / head_dim)  # (hd/2,)
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, hd/2)
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hd)
    return angles.cos(), angles.sin()


class RopeTable:
    """cos and sin of every position in ``[0, block_size)``, built once per device.

    A decode step then gathers B rows of a table instead of computing B x head_dim sines and
    cosines. Kept in float32 outside the module's buffers, so a bf16 serving copy does not
    round the angles (the cos/sin themselves are what :func:`rope_cos_sin` gives).
    """

    def __init__(self, block_size: int, head_dim: int, theta: float) -> None:
        self.block_size, self.head_dim, self.theta = block_size, head_dim, theta
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def lookup(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin, (B, 1, T, head_dim), for ``positions`` (B, T) in ``[0, block_size)``."""
        table = self._tables.get(positions.device)
        if table is None:
            every = torch.arange(self.block_size, device=positions.device)[None]  # (1, S)
            cos, sin = rope_cos_sin(every, self.head_dim, self.theta)  # (1, 1, S, hd)
            table = self._tables[positions.device] = (cos[0, 0], sin[0, 0])  # (S, hd)
        return table[0][positions][:, None], table[1][positions][:, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + hd/2) of ``x`` (..., T, hd) by the angles in cos/sin."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def _cached_attention(q: Tensor, k: Tensor, v: Tensor, step: _CacheStep) -> Tensor:
    """Attention of q (B, nh, T, hd) over a cache k, v (B, nh, S, hd) -> (B, nh, T, hd).

    On a CPU in float32, as a ``baddbmm`` that adds the mask as it scales the scores, a
    float32 softmax and a ``bmm`` (a 64-row decode step's attention: ~6% faster than torch's
    CPU SDPA kernel). Elsewhere the fused kernel; on a CPU in bf16 it is ~1.8x faster than
    the baddbmm form (64 rows x 4 heads, 128 slots, torch 2.13: 0.33 against 0.60 ms a layer).
    """
    if step.bias is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask)
    B, nh, T, hd = q.shape
    S = k.shape[2]
    scores = torch.baddbmm(
        step.bias,  # (B*nh, T, S): 0 where a query may attend, -inf elsewhere
        q.reshape(B * nh, T, hd),
        k.view(B * nh, S, hd).transpose(1, 2),
        alpha=hd**-0.5,
    )  # (B*nh, T, S)
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.bmm(probs, v.view(B * nh, S, hd)).view(B, nh, T, hd)


@dataclass
class _CacheStep:
    """What every layer needs to read and write its KV cache for one cached forward."""

    rows: Tensor  # (B*nh*T,) long: each new key's row in its cache viewed as (B*nh*S, hd)
    """Where each new key goes, in the order of ``k.reshape(-1, hd)`` for k (B, nh, T, hd):
    one ``index_copy_`` per cache (~10x faster on CPU than an index_put_ of three indices)."""
    mask: Tensor  # (B, 1, T, S) bool: True where a query may attend
    bias: Tensor | None  # (B*nh, T, S) 0 / -inf: the float32 CPU form of mask


def _write_cache(cache: Tensor, new: Tensor, rows: Tensor) -> None:
    """cache (B, nh, S, hd), contiguous, gets new (B, nh, T, hd) at the rows of a _CacheStep."""
    hd = cache.shape[-1]
    cache.view(-1, hd).index_copy_(0, rows, new.reshape(-1, hd))


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
        nh, hd = self.n_head, self.head_dim
        qkv = self.c_attn(x).view(B, T, 3 * nh, hd).transpose(1, 2)  # (B, 3nh, T, hd)
        qk = apply_rope(qkv[:, : 2 * nh], cos, sin)  # (B, 2nh, T, hd): q and k in one go
        q, k, v = qk[:, :nh], qk[:, nh:], qkv[:, 2 * nh :]  # (B, nh, T, hd) each
        if cache is None:
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            assert step is not None
            k_cache, v_cache = cache  # (B, nh, S, hd), updated in place
            _write_cache(k_cache, k, step.rows)
            _write_cache(v_cache, v, step.rows)
            y = _cached_attention(q, k_cache, v_cache, step)
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


class SwiGLU(nn.Module):
    """Llama's MLP, ``down(silu(gate(x)) * up(x))``, with gate and up as one matmul.

    ``c_fc`` holds Llama's ``gate_proj`` (first half of its rows) and ``up_proj`` (second
    half) stacked, so a step runs one larger matmul instead of two; export splits it.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.hidden = config.mlp_hidden
        self.c_fc = nn.Linear(config.n_embd, 2 * self.hidden, bias=config.bias)
        self.c_proj = nn.Linear(self.hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.c_fc(x).split(self.hidden, dim=-1)  # (B, T, hidden) each
        y: Tensor = self.dropout(self.c_proj(F.silu(gate) * up))  # (B, T, C)
        return y


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config)
        self.mlp = SwiGLU(config) if config.mlp == "swiglu" else MLP(config)

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
        self.rope = RopeTable(config.block_size, self.head_dim, config.rope_theta)
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
        state = state if state is not None else self._empty_state(B)
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
        cos, sin = self.rope.lookup(positions)  # (1, 1, T, hd)
        x = self.drop(self.wte(tokens))  # (B, T, C)
        ks, vs = [], []
        for block in self.h:
            x, k, v = block(x, cos, sin)
            ks.append(k.detach())
            vs.append(v.detach())
        state = KVState(ks, vs, lengths=[T] * B, consumed=[T] * B)
        return self._logits(x, last_only), state

    def _forward_cached(self, tokens: Tensor, state: KVState, last_only: bool) -> Tensor:
        T = tokens.shape[1]
        self._ensure_capacity(state, max(state.lengths) + T)
        start = torch.tensor(state.lengths, device=tokens.device)  # (B,)
        positions = start[:, None] + torch.arange(T, device=tokens.device)  # (B, T)
        x = self._attend_cached(tokens, positions, state.k, state.v)
        state.lengths = [n + T for n in state.lengths]
        state.consumed = [n + T for n in state.consumed]
        return self._logits(x, last_only)

    def _attend_cached(
        self,
        tokens: Tensor,
        positions: Tensor,
        k: Sequence[Tensor],
        v: Sequence[Tensor],
    ) -> Tensor:
        """``tokens`` (B, T) at ``positions`` (B, T), each below ``block_size``, through
        contiguous caches ``k[i]``/``v[i]`` (B, nh, S, hd), written in place -> the last block's
        output (B, T, C). Static shapes and no host reads: prefill chunks and the
        (graph-capturable) decode step share it."""
        B, T = tokens.shape
        nh, S = self.config.n_head, k[0].shape[2]
        dev = tokens.device
        heads = torch.arange(B * nh, device=dev).view(B, nh, 1)  # (B, nh, 1): row b, head h
        rows = (heads * S + positions[:, None, :]).view(-1)  # (B*nh*T,)
        mask = (torch.arange(S, device=dev) <= positions[:, :, None])[:, None]  # (B, 1, T, S)
        bias = None
        if dev.type == "cpu" and k[0].dtype == torch.float32:
            zero = torch.zeros((), dtype=k[0].dtype)
            bias = zero.masked_fill(~mask, -torch.inf).expand(B, nh, T, S).reshape(B * nh, T, S)
        step = _CacheStep(rows, mask, bias)
        cos, sin = self.rope.lookup(positions)  # (B, 1, T, hd)
        x = self.drop(self.wte(tokens))  # (B, T, C)
        for i, block in enumerate(self.h):
            x, _, _ = block(x, cos, sin, (k[i], v[i]), step)
        return x

    def _logits(self, x: Tensor, last_only: bool) -> Tensor:
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        logits: Tensor = self.lm_head(self.ln_f(x))  # (B, T, V)
        return logits

    # ------------------------------------------------------------------------- the cache

    def _ensure_capacity(self, state: KVState, needed: int) -> None:
        """Room for ``needed`` entries per row, in contiguous buffers (what a step writes)."""
        S = state.capacity
        if needed <= S:
            for kv in (state.k, state.v):
                kv[:] = [t.contiguous() for t in kv]
            return
        rounded = -(-needed // _CAPACITY_STEP) * _CAPACITY_STEP
        new_S = max(needed, min(rounded, self.config.block_size))
        for kv in (state.k, state.v):
            for i, old in enumerate(kv):
                B, nh, _, hd = old.shape
                grown = old.new_zeros(B, nh, new_S, hd)
                grown[:, :, :S] = old
                kv[i] = grown

    def _make_room(self, state: KVState, n_new: int, rows: int | None = None) -> None:
        """Slide the window of every row (of the first ``rows``) with no room for ``n_new`` more."""
        block, sinks = self.config.block_size, self.config.attn_sinks
        slack = block // 4  # free more than needed, so decode evicts once per quarter window
        for b, n in enumerate(state.lengths[:rows]):
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

    def _empty_state(self, batch_size: int) -> KVState:
        shape = (batch_size, self.config.n_head, 0, self.head_dim)  # (B, nh, S=0, hd)
        empty = torch.zeros(shape, device=self.device, dtype=self.dtype)
        L = self.config.n_layer
        return KVState(
            k=[empty.clone() for _ in range(L)],
            v=[empty.clone() for _ in range(L)],
            lengths=[0] * batch_size,
            consumed=[0] * batch_size,
        )

    def repeat_state(self, state: KVState, n: int) -> KVState:
        if state.batch_size != 1:
            raise ValueError(f"repeat_state takes a one-row state, not {state.batch_size} rows")
        return KVState(
            [k.expand(n, -1, -1, -1).contiguous() for k in state.k],  # (n, nh, S, hd)
            [v.expand(n, -1, -1, -1).contiguous() for v in state.v],
            state.lengths * n,
            state.consumed * n,
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

    # ------------------------------------------------------------------ slot-based decode

    def new_slots(self, max_batch: int) -> KVSlots:
        """Slots of ``block_size`` entries per row on a GPU (static shapes, for CUDA graphs);
        on a CPU of as many as the rows in use need (see :meth:`_fit_capacity`)."""
        cfg = self.config
        capacity = _CAPACITY_STEP if self.device.type == "cpu" else cfg.block_size
        shape = (cfg.n_layer, max_batch, cfg.n_head, min(capacity, cfg.block_size), self.head_dim)
        k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        return KVSlots(k, v, [0] * max_batch, [0] * max_batch)

    def _fit_capacity(self, slots: KVSlots, rows: int, capacity: int) -> None:
        """Re-size the slots to ``capacity`` entries per row, keeping rows 0..rows-1.

        A step attends over every entry of rows 0..B-1, and over a contiguous (B, nh, S, hd)
        block a CPU reads each once; a trimmed view of larger buffers would be strided, which
        CPU matmuls copy first (~4x slower). So the buffers themselves follow the longest row in
        use, by whole multiples of 64: a copy of the rows in use every 64 tokens at most.
        """
        S = slots.k.shape[3]
        if capacity == S:
            return
        keep = min(S, capacity)
        for name in ("k", "v"):
            old: Tensor = getattr(slots, name)
            L, max_batch, nh, _, hd = old.shape
            # Zeros, not empty: junk slots are masked, but 0 x NaN would still be NaN.
            new = old.new_zeros(L, max_batch, nh, capacity, hd)
            new[:, :rows, :, :keep] = old[:, :rows, :, :keep]
            setattr(slots, name, new)

    def _capacity_for(self, needed: int) -> int:
        """Slots for ``needed`` entries: a whole multiple of 64, at most ``block_size``."""
        return min(-(-needed // _CAPACITY_STEP) * _CAPACITY_STEP, self.config.block_size)

    def load_row(self, slots: KVSlots, row: int, state: KVSeqState | None) -> None:
        """Row ``row`` continues ``state`` (``None``: a fresh conversation); O(its prefix)."""
        t = 0 if state is None else state.k.shape[2]
        if t > slots.k.shape[3]:
            self._fit_capacity(slots, row, self._capacity_for(t))
        if state is not None:
            slots.k[:, row, :, :t] = state.k  # (L, nh, t, hd), cast to the slots' dtype
            slots.v[:, row, :, :t] = state.v
        slots.lengths[row], slots.consumed[row] = t, 0 if state is None else state.length

    def save_row(self, slots: KVSlots, row: int) -> KVSeqState:
        t = slots.lengths[row]
        k, v = slots.k[:, row, :, :t].clone(), slots.v[:, row, :, :t].clone()  # (L, nh, t, hd)
        return KVSeqState(k, v, slots.consumed[row])

    def move_row(self, slots: KVSlots, src: int, dst: int) -> None:
        t = slots.lengths[src]
        slots.k[:, dst, :, :t] = slots.k[:, src, :, :t]
        slots.v[:, dst, :, :t] = slots.v[:, src, :, :t]
        slots.lengths[dst], slots.consumed[dst] = t, slots.consumed[src]

    def make_room(self, slots: KVSlots, n: int) -> None:
        """Slide the window of each of rows 0..n-1 that has no slot left for its next token."""
        if max(slots.lengths[:n], default=0) >= self.config.block_size:
            self._make_room(slots.as_state(), 1, rows=n)

    def decode_step(
        self, slots: KVSlots, tokens: Tensor, positions: Tensor, window: int | None = None
    ) -> Tensor:
        """One token for rows 0..B-1: ``tokens`` (B,) at ``positions`` (B,) -> logits (B, V).

        Writes the new keys and values into the rows' slots. Attention reads ``window`` slots
        of every row (a CPU saving when all rows are short; every position must be below it;
        the slots are re-sized to it), or ``block_size`` with ``None``: then every shape
        depends on B only and nothing reads back to the host, so the step can be captured in
        a CUDA graph.
        """
        B = tokens.shape[0]
        capacity = self.config.block_size if window is None else self._capacity_for(window)
        self._fit_capacity(slots, B, capacity)
        k, v = slots.k[:, :B], slots.v[:, :B]  # (L, B, nh, S, hd), contiguous
        x = self._attend_cached(tokens[:, None], positions[:, None], k.unbind(0), v.unbind(0))
        return self._logits(x, last_only=True)[:, 0].float()  # (B, V)

    def prefill_rows(self, slots: KVSlots, tokens: Tensor, lengths: list[int]) -> Tensor:
        """Feed row r of rows 0..B-1 its first ``lengths[r]`` of ``tokens`` (B, T), right-padded.

        -> logits (B, V) after each row's last token. ``T`` must be at most half the window.
        Padding goes through too, at positions past the row's end: attention never looks
        there (a query sees slots up to its own position) and later tokens overwrite it.
        """
        B, T = tokens.shape
        assert self.config.block_size >= 2 * T, "a prefill chunk must fit half the window"
        self._make_room(slots.as_state(), T, rows=B)  # room for T in every row: padding too
        self._fit_capacity(slots, B, self._capacity_for(max(slots.lengths[:B]) + T))
        start = torch.tensor(slots.lengths[:B], device=tokens.device)  # (B,)
        positions = start[:, None] + torch.arange(T, device=tokens.device)  # (B, T)
        k, v = slots.k[:, :B], slots.v[:, :B]  # (L, B, nh, S, hd), contiguous
        x = self._attend_cached(tokens, positions, k.unbind(0), v.unbind(0))  # (B, T, C)
        last = torch.tensor(lengths, device=tokens.device) - 1  # (B,)
        x = x[torch.arange(B, device=tokens.device), last][:, None]  # (B, 1, C)
        for r, n in enumerate(lengths):
            slots.lengths[r] += n
            slots.consumed[r] += n
        return self._logits(x, last_only=True)[:, 0].float()  # (B, V)

    def flops_per_token(self) -> int:
        # nanoGPT / PaLM appendix B: 6N for the weights (the tied embedding counted once, as
        # the head's matmul) plus 12 * L * d * T for attention scores over a full window.
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
