"""Tiny seeded checkpoints for engine tests (CPU, untrained: we test plumbing, not prose)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.models import build_model
from engine.models.config import ModelConfig
from engine.tokenizer import train_char_tokenizer

CORPUS = [
    "<|user|>hello there<|eot|><|bot|>hi, how are you?<|eot|>",
    "<|user|>what did you do this weekend?<|eot|><|bot|>went hiking with friends<|eot|>",
    "<|user|>你好，今天天气怎么样？<|eot|><|bot|>很好！<|eot|>",
]

CONFIGS = {
    "gru": ModelConfig(arch="gru", n_embd=16, n_hidden=32, n_layer=1, block_size=64),
    "gpt": ModelConfig(arch="gpt", n_embd=32, n_layer=2, n_head=2, block_size=48),
}


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
"""Where engine tests run: always the CPU, and a GPU where there is one (CUDA graphs on)."""


def tiny_checkpoint(
    directory: Path, arch: str = "gru", seed: int = 0, device: str = "cpu"
) -> Checkpoint:
    """Build, save and load back a tiny model (the engine loads what the trainer saves)."""
    torch.manual_seed(seed)
    tokenizer = train_char_tokenizer(CORPUS)
    model = build_model(CONFIGS[arch].with_vocab(tokenizer.vocab_size))
    path = save_checkpoint(
        directory, model, tokenizer, preset=f"test-{arch}", metrics={}, provenance={}
    )
    return load_checkpoint(path, device=device)
