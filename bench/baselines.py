"""The plain loops ``bench/serving.py`` compares the engine with, on the same model and dtype:
one request at a time carrying the model's own state (the classic char-RNN loop; the GPT with
its KV cache), one static batch of every request, and — labelled naive, never a headline —
nanoGPT's ``generate`` as written (the whole context re-run for every token)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from engine.checkpoint import Checkpoint
from engine.serve.batches import serving_copy

# -- the baselines: one request at a time, and one static batch ----------------------------------

TEMPERATURE = 0.8
"""Every side samples at this temperature over the whole vocabulary."""
MESSAGE = "hey, what did you get up to this weekend? anything fun?"
"""The user message every throughput request sends."""


def prompt_ids(ckpt: Checkpoint) -> list[int]:
    return ckpt.tokenizer.encode(f"<|user|>{MESSAGE}<|eot|><|bot|>")


def sample_plain(logits: torch.Tensor, eot: int) -> torch.Tensor:
    """The classic step: scale by the temperature, softmax, draw (end-of-turn banned)."""
    logits = logits.float() / TEMPERATURE
    logits[..., eot] = -torch.inf
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)  # (B, 1)


@torch.inference_mode()
def char_rnn_loop(ckpt: Checkpoint, new_tokens: int) -> int:
    """One request, batch 1: feed the prompt, then one token per step, carrying the model's
    state (the classic char-RNN sampler for a GRU; for the GPT, its KV cache). Returns the
    tokens generated."""
    model, tok = ckpt.model, ckpt.tokenizer
    prompt = torch.tensor([prompt_ids(ckpt)], device=model.device)
    logits, state = model(prompt, None, last_only=True)
    text = []
    for i in range(new_tokens):
        nxt = sample_plain(logits[0], tok.eot_id)  # (1, 1)
        text.append(tok.decode(nxt[0].tolist()))
        if i + 1 < new_tokens:
            logits, state = model(nxt, state, last_only=True)
    return len(text)


@torch.inference_mode()
def static_batch(ckpt: Checkpoint, n: int, new_tokens: int) -> int:
    """``n`` requests as one (n, T) batch (one prompt, so no padding), decoded together with
    the model's state until each has ``new_tokens``. Returns the tokens generated."""
    model, tok = ckpt.model, ckpt.tokenizer
    prompt = torch.tensor([prompt_ids(ckpt)] * n, device=model.device)  # (n, T)
    logits, state = model(prompt, None, last_only=True)  # (n, 1, V)
    rows: list[list[int]] = [[] for _ in range(n)]
    for i in range(new_tokens):
        nxt = sample_plain(logits[:, -1], tok.eot_id)  # (n, 1)
        for row, token in zip(rows, nxt[:, 0].tolist(), strict=True):
            row.append(token)
        if i + 1 < new_tokens:
            logits, state = model(nxt, state, last_only=True)
    for row in rows:
        tok.decode(row)  # the text, as the other sides make it
    return n * new_tokens


@torch.inference_mode()
def nanogpt_generate(ckpt: Checkpoint, new_tokens: int) -> int:
    """nanoGPT's ``generate`` as written: every step re-runs the (window-cropped) context
    from scratch. A naive baseline, reported as such."""
    model, block = ckpt.model, ckpt.config.block_size
    idx = torch.tensor([prompt_ids(ckpt)], device=model.device)
    for _ in range(new_tokens):
        logits, _ = model(idx[:, -block:], None, last_only=True)
        idx = torch.cat((idx, sample_plain(logits[:, -1], ckpt.tokenizer.eot_id)), dim=1)
    return new_tokens


def loop_tokens_per_s(
    loop: Callable[[Checkpoint, int], int], ckpt: Checkpoint, n: int, new_tokens: int
) -> float:
    start = time.perf_counter()
    tokens = sum(loop(ckpt, new_tokens) for _ in range(n))
    return tokens / (time.perf_counter() - start)


def static_tokens_per_s(ckpt: Checkpoint, n: int, new_tokens: int) -> float:
    start = time.perf_counter()
    tokens = static_batch(ckpt, n, new_tokens)
    return tokens / (time.perf_counter() - start)


def in_dtype(ckpt: Checkpoint, dtype: torch.dtype) -> Checkpoint:
    """``ckpt`` with a copy of its model in ``dtype`` (the engine's own serving copy)."""
    return dataclasses.replace(ckpt, model=serving_copy(ckpt.model, dtype))
