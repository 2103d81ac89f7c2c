"""Model configuration and the named presets.

One frozen :class:`ModelConfig` covers both architectures; fields one architecture does not
use keep their defaults and are ignored by it. A preset leaves ``vocab_size`` at 0 because the
vocabulary is only known once the tokenizer is trained: use :func:`preset_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from bot.errors import ModelError

Arch = Literal["gru", "gpt"]
Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "swiglu"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    arch: Arch
    vocab_size: int = 0
    """0 in a preset: filled in from the tokenizer by :func:`preset_config`."""
    n_embd: int
    """Embedding width (GRU: the input embedding; GPT: the residual stream)."""
    n_layer: int = 1
    n_hidden: int = 0
    """GRU units per layer (GRU only)."""
    n_head: int = 1
    """Attention heads (GPT only); must divide ``n_embd``."""
    block_size: int = 256
    """GPT: the context window (``max_context``). GRU: the training sequence length only."""
    dropout: float = 0.0
    norm: Norm = "rmsnorm"
    bias: bool = False
    rope_theta: float = 10_000.0
    attn_sinks: int = 4
    """GPT: first tokens whose KV stays in the cache when the window slides (StreamingLLM)."""
    mlp: Mlp = "gelu"
    """GPT: ``"swiglu"`` is Llama's MLP (the layout `parley export` needs); ``"gelu"`` is
    GPT-2's, which checkpoints written before the field existed have."""
    n_mlp: int = 0
    """GPT, SwiGLU: the hidden width; 0 = Llama's rule, 8/3 x ``n_embd`` rounded up to a
    multiple of 64 (about the parameters of GELU's 4 x ``n_embd``)."""

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ModelError("invalid model config: " + "; ".join(problems))

    def _problems(self) -> Iterator[str]:
        if self.arch not in ("gru", "gpt"):
            yield f"arch must be 'gru' or 'gpt', not {self.arch!r}"
        if self.vocab_size < 0 or self.n_embd < 1 or self.n_layer < 1:
            yield "vocab_size >= 0, n_embd >= 1 and n_layer >= 1 are required"
        if not 0.0 <= self.dropout < 1.0:
            yield f"dropout must be in [0, 1), not {self.dropout}"
        if self.block_size < 1:
            yield "block_size must be >= 1"
        if self.arch == "gru" and self.n_hidden < 1:
            yield "a GRU needs n_hidden >= 1"
        if self.arch == "gpt":
            if self.n_head < 1 or self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
                yield "n_head must divide n_embd into an even head size (RoPE rotates pairs)"
            if not 0 <= self.attn_sinks <= self.block_size // 2:
                yield "attn_sinks must be in [0, block_size // 2]"
            if self.norm not in ("layernorm", "rmsnorm"):
                yield f"norm must be 'layernorm' or 'rmsnorm', not {self.norm!r}"
            if self.mlp not in ("gelu", "swiglu"):
                yield f"mlp must be 'gelu' or 'swiglu', not {self.mlp!r}"
            if self.n_mlp < 0:
                yield "n_mlp must be >= 0 (0: Llama's rule)"

    @property
    def mlp_hidden(self) -> int:
        """The SwiGLU MLP's hidden width (see ``n_mlp``)."""
        if self.n_mlp:
            return self.n_mlp
        return -(-8 * self.n_embd // (3 * 64)) * 64

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        return dataclasses.replace(self, vocab_size=vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"invalid model config: unknown fields {unknown}")
        try:
            return cls(**data)
        except TypeError as e:  # a required field is missing
            raise ModelError(f"invalid model config: {e}") from e


# Sizes are chosen for what each preset is for; the comments say what that is. The GPTs use
# Llama's layout (RMSNorm, RoPE, SwiGLU, no biases, tied embeddings) so `parley export` can
# hand them to transformers / llama.cpp. Their sizes were measured with GPT-2's GELU MLP;
# SwiGLU's three 8/3-wide matrices hold as many parameters as its two 4-wide ones (192, 768:
# exactly; 128: 12% more, from rounding up to 64).
PRESETS: dict[str, ModelConfig] = {
    # The classic char-RNN recipe Parley grew from: embedding 256, one GRU of 1024 units.
    "seed": ModelConfig(arch="gru", n_embd=256, n_hidden=1024, n_layer=1, block_size=100),
    # Trains in minutes on a laptop CPU; a smoke test with real text.
    "gru-small": ModelConfig(arch="gru", n_embd=128, n_hidden=256, n_layer=1, block_size=128),
    # The default GRU: ~2.5M params. No dropout: a budget of minutes sees each token about
    # once, so there is nothing to regularise yet, and dropout only slows learning.
    "gru": ModelConfig(arch="gru", n_embd=256, n_hidden=512, n_layer=2, block_size=256),
    "gru-large": ModelConfig(
        arch="gru", n_embd=512, n_hidden=1024, n_layer=3, block_size=256, dropout=0.1
    ),
    # Tests and first tries.
    "gpt-tiny": ModelConfig(
        arch="gpt", n_embd=128, n_layer=2, n_head=4, block_size=128, mlp="swiglu"
    ),
    # Half the default's width: ties it at 10 CPU-minutes (1.643 vs 1.644 bits/char on a
    # contended 2-core VM) and answers faster, but learns less per token (4.27 vs 4.16
    # nats/token after 400 steps), so more time or compute favours the default.
    "gpt-small": ModelConfig(
        arch="gpt", n_embd=128, n_layer=4, n_head=4, block_size=256, mlp="swiglu"
    ),
    # The default, chosen by measurement (bench/train.py, README): with a 4k BPE, the best
    # bits/char a 2-core CPU reaches in 10 minutes; 1.8M params + 0.8M embedding. Wider
    # models learn more per token but see too few tokens in that time (256 wide: 1.689).
    # No dropout (see "gru"); on a CPU dropout also costs a random mask per activation and
    # rules out the flash-attention kernel.
    "gpt": ModelConfig(arch="gpt", n_embd=192, n_layer=4, n_head=4, block_size=256, mlp="swiglu"),
    # GPT-2 small's shape (~85M non-embedding params): wants a GPU and a lot of chat.
    "gpt-base": ModelConfig(
        arch="gpt", n_embd=768, n_layer=12, n_head=12, block_size=1024, mlp="swiglu"
    ),
}
DEFAULT_PRESET = "gpt"
"""What the preset name ``"default"`` (the settings' default) resolves to."""


def preset_config(name: str, vocab_size: int) -> ModelConfig:
    """The preset called ``name`` (or ``"default"``), sized for a ``vocab_size`` vocabulary."""
    resolved = DEFAULT_PRESET if name == "default" else name
    if resolved not in PRESETS:
        raise ModelError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[resolved].with_vocab(vocab_size)
