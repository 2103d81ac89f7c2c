"""`parley export`: a checkpoint in Hugging Face's Llama format.

A GPT checkpoint with Llama's layout (RMSNorm, RoPE, SwiGLU MLP, no biases, tied embeddings:
the GPT presets) maps one to one onto ``transformers``' ``LlamaForCausalLM``::

    parley export CHECKPOINT --format hf OUT

writes into ``OUT``::

    config.json              LlamaConfig (model_type "llama"), eos = <|eot|>, pad = <|pad|>
    generation_config.json   the same token ids, for ``generate``
    model.safetensors        weights under Llama's names (the tied head stored once)
    tokenizer.json           the checkpoint's tokenizer in HF ``tokenizers`` form
    tokenizer_config.json    a fast tokenizer, its special tokens and a chat template

which loads offline with ``LlamaForCausalLM.from_pretrained(OUT)`` and
``AutoTokenizer.from_pretrained(OUT)``; tools that read that format (llama.cpp's
``convert_hf_to_gguf.py``, and through it Ollama) can convert it. Writing needs neither
``transformers`` nor a network: the files are built from the checkpoint alone.

Parley's weights map without a permutation: its RoPE rotates channel pairs (i, i + hd/2), the
``rotate_half`` convention of transformers' Llama, and its fused ``c_attn`` / ``c_fc`` split
into q/k/v and gate/up. Past ``block_size`` tokens the two differ: Parley slides its window
(keeping attention sinks), transformers attends over everything.

The chat template lays messages out as Parley's prompt (``<|user|>text<|eot|>``, then
``<|bot|>``); it does not clean texts or merge consecutive turns of one speaker as Parley does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click
import torch
from safetensors.torch import save_file
from torch import Tensor

from bot.errors import ModelError
from engine.checkpoint import Checkpoint, load_checkpoint
from engine.models.config import ModelConfig
from engine.tokenizer import (
    BOT,
    EOT,
    PAD,
    SPECIALS,
    TOKENIZER_FILE,
    UNK,
    USER,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
)

FORMATS = ("hf",)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}" + EOT + "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    + BOT
    + "{{ message['content'] }}"
    + EOT
    + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + BOT + "{% endif %}"
)
"""Parley's prompt layout; system messages are dropped, as Parley drops them."""


def check_llama_layout(config: ModelConfig) -> None:
    """Raise ``ModelError`` unless ``config`` maps onto ``LlamaForCausalLM`` exactly."""
    problems = []
    if config.arch != "gpt":
        problems.append(f"arch is {config.arch!r} (only a GPT has Llama's layout)")
    else:
        if config.norm != "rmsnorm":
            problems.append(f"norm is {config.norm!r}, Llama's is 'rmsnorm'")
        if config.bias:
            problems.append("it has biases, Llama has none")
        if config.mlp != "swiglu":
            problems.append(f"mlp is {config.mlp!r}, Llama's is 'swiglu'")
    if problems:
        raise ModelError(
            "this checkpoint cannot be exported in the Llama format: "
            + "; ".join(problems)
            + ". Train a GPT preset (they use Llama's layout) and export that."
        )


# ----------------------------------------------------------------------------------- weights


def llama_tensors(ckpt: Checkpoint) -> dict[str, Tensor]:
    """The checkpoint's weights under ``LlamaForCausalLM``'s names (float32, contiguous)."""
    cfg = ckpt.config
    C, hidden = cfg.n_embd, cfg.mlp_hidden
    sd = {name: t.detach().to("cpu", torch.float32) for name, t in ckpt.model.state_dict().items()}
    out = {"model.embed_tokens.weight": sd["wte.weight"], "model.norm.weight": sd["ln_f.weight"]}
    for i in range(cfg.n_layer):
        src, dst = f"h.{i}.", f"model.layers.{i}."
        q, k, v = sd[src + "attn.c_attn.weight"].split(C, dim=0)  # (C, C) each, heads in order
        gate, up = sd[src + "mlp.c_fc.weight"].split(hidden, dim=0)  # (hidden, C) each
        out |= {
            dst + "input_layernorm.weight": sd[src + "ln_1.weight"],
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": sd[src + "attn.c_proj.weight"],
            dst + "post_attention_layernorm.weight": sd[src + "ln_2.weight"],
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": sd[src + "mlp.c_proj.weight"],
        }
    return {name: t.contiguous() for name, t in out.items()}


def llama_config(cfg: ModelConfig, tok: Tokenizer) -> dict[str, Any]:
    """``config.json`` for ``LlamaConfig`` (rope_theta both flat, as transformers 4 and
    llama.cpp read it, and in ``rope_parameters``, as transformers 5 does)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.n_embd // cfg.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": 1e-5,  # torch.nn.RMSNorm's eps as the model builds it
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": tok.eot_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": True,
    }


# --------------------------------------------------------------------------------- tokenizer


def hf_tokenizer_json(tok: Tokenizer) -> str:
    """The tokenizer as an HF ``tokenizers`` JSON that encodes and decodes as ``tok`` does."""
    if isinstance(tok, BPETokenizer):
        with tempfile.TemporaryDirectory() as tmp:
            return tok.save(Path(tmp)).read_text(encoding="utf-8")  # already that format
    if isinstance(tok, CharTokenizer):
        return _char_as_hf(tok).to_str()
    raise ModelError(f"cannot export a {type(tok).__name__}")


def _char_as_hf(tok: CharTokenizer) -> Any:  # tokenizers.Tokenizer; untyped library
    """A character vocabulary as a BPE with no merges: each character is one token, an
    unknown one ``<|unk|>``, and decoding joins tokens with nothing between them."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFTokenizer

    specials = [*SPECIALS, UNK]
    vocab = {s: i for i, s in enumerate([*specials, *tok.chars])}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    hf.decoder = decoders.Fuse()
    return hf


def tokenizer_config(tok: Tokenizer, cfg: ModelConfig) -> dict[str, Any]:
    specials = [*SPECIALS, UNK] if isinstance(tok, CharTokenizer) else list(SPECIALS)
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.block_size,
        "bos_token": None,
        "eos_token": EOT,
        "pad_token": PAD,
        "unk_token": UNK if isinstance(tok, CharTokenizer) else None,
        "additional_special_tokens": [s for s in specials if s not in (EOT, PAD, UNK)],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


# ------------------------------------------------------------------------------------ export


def export_hf(ckpt: Checkpoint, out: Path) -> Path:
    """Write ``ckpt`` into the new directory ``out`` in the HF Llama format (atomically)."""
    check_llama_layout(ckpt.config)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out}: exists and is not an empty directory")
    cfg, tok = ckpt.config, ckpt.tokenizer
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_file(llama_tensors(ckpt), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", llama_config(cfg, tok))
        generation = {"eos_token_id": tok.eot_id, "pad_token_id": tok.pad_id}
        _write_json(tmp / "generation_config.json", generation)
        (tmp / TOKENIZER_FILE).write_text(hf_tokenizer_json(tok), encoding="utf-8")
        _write_json(tmp / "tokenizer_config.json", tokenizer_config(tok, cfg))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="hf",
    show_default=True,
    help="hf: Hugging Face transformers' Llama (LlamaForCausalLM + a fast tokenizer).",
)
def export_command(checkpoint: Path, out: Path, fmt: str) -> None:
    """Write CHECKPOINT in another tool's format into the new directory OUT.

    The result loads with transformers.LlamaForCausalLM.from_pretrained(OUT) and
    AutoTokenizer.from_pretrained(OUT).
    """
    try:
        ckpt = load_checkpoint(checkpoint, device="cpu")
        written = export_hf(ckpt, out)
    except ModelError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"exported {checkpoint} ({fmt}) to {written}")
