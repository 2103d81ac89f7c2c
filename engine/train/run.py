"""A training run put together: data, tokenizer and model built from options, then trained.

A run is a chain of small steps, each turning one thing into the next::

    --data specs -> TextSplits -> Tokenizer -> TrainData -> model -> Trainer.run() -> checkpoint

:func:`run_training` is the one entry point (``parley train``, the benchmarks and the tests).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bot.errors import ModelError
from engine.data.remembered import REPLIES_FILE, write_replies
from engine.models import LanguageModel, build_model, preset_config
from engine.models.config import DEFAULT_PRESET
from engine.tokenizer import Tokenizer, load_tokenizer
from engine.train import ddp
from engine.train.data import (
    TextSplits,
    TrainData,
    encode_split,
    fit_tokenizer,
    load_texts,
    texts_fingerprint,
    training_vocabulary,
)
from engine.train.loop import TrainConfig, Trainer, TrainResult
from engine.train.schedule import recipe_for
from engine.train.state import STATE_DIR, find_state
from engine.train.state import saved_tokenizer as state_tokenizer

SPLIT_SEED = 0
"""The train/validation split never depends on the training seed: every run and the live
model are scored on the same held-out conversations."""


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a run trains on and what it builds; the optimizer's side is ``TrainConfig``."""

    data: tuple[str, ...] = ("chitchat",)
    include_bot: bool = False
    opted_out: tuple[str, ...] = ()
    val_fraction: float = 0.05
    preset: str = "default"
    tokenizer: str | None = None
    vocab_size: int | None = None
    dropout: float | None = None
    block_size: int | None = None
    out: Path
    cache_dir: Path | None = None
    overwrite: bool = False


def resolve_preset(name: str) -> str:
    """``"default"`` (the settings' default) means the preset the benchmark found best."""
    return DEFAULT_PRESET if name == "default" else name


def train_config(preset: str, **overrides: Any) -> TrainConfig:
    """The preset's recipe as a TrainConfig, with every non-None override applied."""
    arch = preset_config(resolve_preset(preset), 1).arch
    recipe = recipe_for(resolve_preset(preset), arch)
    base: dict[str, Any] = {
        "lr": recipe.lr,
        "batch_size": recipe.batch_size,
        "grad_accum": recipe.grad_accum,
        "warmup_steps": recipe.warmup_steps,
        "eval_interval": recipe.eval_interval,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


def run_training(
    opts: RunOptions, cfg: TrainConfig, world: ddp.World | None = None, **trainer_kw: Any
) -> TrainResult:
    """Build the data, tokenizer and model that ``opts`` describe and train them."""
    world = world or ddp.World(0, 1, ddp.pick_device("auto"))
    preset = resolve_preset(opts.preset)
    prepare_out(opts.out, opts.overwrite, world)
    texts = load_texts(
        opts.data,
        include_bot=opts.include_bot,
        opted_out=opts.opted_out,
        val_fraction=opts.val_fraction,
        split_seed=SPLIT_SEED,
    )
    if not texts.train or not texts.val:
        raise ModelError(
            f"not enough conversations to train on ({len(texts.train)} train, "
            f"{len(texts.val)} validation); add data or lower --val-fraction"
        )
    with _main_first(world):
        tokenizer = _tokenizer(opts, preset, texts)
        data = _encode(tokenizer, texts, opts.cache_dir)
    model = _model(preset, tokenizer, opts, cfg.seed)
    provenance = _provenance(opts, cfg, preset, tokenizer, texts, model)
    with remembered_replies(opts.out, texts, world) as replies:
        trainer = Trainer(
            model, tokenizer, data, cfg, opts.out,
            preset=preset, provenance=provenance, world=world, extra_files=replies,
            **trainer_kw,
        )  # fmt: skip
        return trainer.run()


@contextmanager
def remembered_replies(
    out: Path, texts: TextSplits, world: ddp.World | None = None
) -> Iterator[tuple[Path, ...]]:
    """The training conversations as the checkpoint's remembered replies: a file beside
    ``out`` for the run (rank 0 saves checkpoints, so only it writes one), removed after."""
    if world is not None and not world.is_main:
        yield ()
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.replies-", dir=out.parent))
    try:
        yield (write_replies(work / REPLIES_FILE, texts.remembered),)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare_out(out: Path, overwrite: bool, world: ddp.World) -> None:
    """Refuse to clobber a finished model unless asked; with ``overwrite``, start over."""
    if not world.is_main:
        return
    if overwrite:
        for path in (out / STATE_DIR, out.parent / f".{out.name}.{STATE_DIR}"):
            shutil.rmtree(path, ignore_errors=True)
        return
    if find_state(out) is None and (out / "config.json").exists():
        raise ModelError(
            f"{out} already holds a finished model; choose another --out or pass --overwrite"
        )


@contextmanager
def _main_first(world: ddp.World) -> Iterator[None]:
    """Rank 0 runs the block first (filling the caches); the others then read them."""
    if not world.is_main:
        ddp.barrier(world)
    yield
    if world.is_main:
        ddp.barrier(world)


def _tokenizer(opts: RunOptions, preset: str, texts: TextSplits) -> Tokenizer:
    resumed = state_tokenizer(opts.out)
    if resumed is not None:
        return resumed  # the run being resumed trained with this one
    recipe = recipe_for(preset, preset_config(preset, 1).arch)
    kind = opts.tokenizer or recipe.tokenizer
    vocab_size = opts.vocab_size or recipe.vocab_size or 4096
    if opts.cache_dir is None:
        return fit_tokenizer(kind, texts.train, vocab_size)
    # BPE training takes seconds on the chitchat corpus: worth keeping across runs.
    cached = opts.cache_dir / f"tokenizer-{kind}-{vocab_size}-{texts_fingerprint(texts.train)}"
    if (cached / "tokenizer.json").is_file():
        return load_tokenizer(cached)
    tokenizer = fit_tokenizer(kind, texts.train, vocab_size)
    cached.mkdir(parents=True, exist_ok=True)
    tokenizer.save(cached)
    return tokenizer


def _encode(tokenizer: Tokenizer, texts: TextSplits, cache_dir: Path | None) -> TrainData:
    return TrainData(
        train=encode_split(tokenizer, texts.train, cache_dir),
        val=encode_split(tokenizer, texts.val, cache_dir),
        vocabulary=training_vocabulary(texts.train),
    )


def _model(preset: str, tokenizer: Tokenizer, opts: RunOptions, seed: int) -> LanguageModel:
    config = preset_config(preset, tokenizer.vocab_size)
    changes: dict[str, Any] = {"dropout": opts.dropout, "block_size": opts.block_size}
    config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
    torch.manual_seed(seed)  # the same initial weights on every rank and every rerun
    return build_model(config)


def _provenance(
    opts: RunOptions,
    cfg: TrainConfig,
    preset: str,
    tokenizer: Tokenizer,
    texts: TextSplits,
    model: LanguageModel,
) -> dict[str, Any]:
    return {
        **texts.provenance,
        "preset": preset,
        "model": model.config.to_dict(),
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
        "seed": cfg.seed,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv[1:],
    }


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
