"""Scoring saved checkpoints on held-out data, and publishing one to the model registry.

Every decision here is on the validation split of a fixed split seed (:data:`SPLIT_SEED`),
so a new model and the live one are compared on the same held-out conversations. The test
split is only reported (:func:`evaluate_checkpoint`, through :mod:`engine.quality.report`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from bot.registry import ModelRegistry
from bot.settings import Settings
from engine.checkpoint import load_checkpoint
from engine.quality.report import QualityReport, evaluate_test
from engine.quality.splits import DEFAULT_TEST_FRACTION
from engine.train.data import TokenSplit, encode_split, load_texts, training_vocabulary
from engine.train.evaluate import EvalReport, autocast_dtype, evaluate_loss, evaluate_model
from engine.train.run import SPLIT_SEED, RunOptions
from engine.train.system import announce_version, opted_out_users

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    settings: Settings, path: Path, data: tuple[str, ...], device: torch.device
) -> tuple[EvalReport, QualityReport]:
    """The checkpoint scored on the validation split of the data it was trained on, and on
    its test split (loss and response selection, reported only)."""
    ckpt = load_checkpoint(path, device=device)
    prov = ckpt.provenance
    texts = load_texts(
        data or tuple(prov.get("data") or ("chitchat",)),
        include_bot=bool(prov.get("include_bot", False)),
        opted_out=tuple(opted_out_users(settings)),
        val_fraction=float(prov.get("val_fraction", 0.05)),
        split_seed=int(prov.get("split_seed", 0)),
        test_fraction=float(prov.get("test_fraction", DEFAULT_TEST_FRACTION)),
    )
    cache, amp_dtype = settings.data_dir / "cache", autocast_dtype(device, "auto")
    val = encode_split(ckpt.tokenizer, texts.val, cache)
    report = evaluate_model(
        ckpt.model, ckpt.tokenizer, val, training_vocabulary(texts.train), amp_dtype=amp_dtype
    )
    test = evaluate_test(ckpt.model, ckpt.tokenizer, texts, cache_dir=cache, amp_dtype=amp_dtype)
    return report, test


def publish(settings: Settings, checkpoint: Path, opts: RunOptions, device: torch.device) -> str:
    """Add the checkpoint to the registry; make it live if it beats the live model's bpc.

    Both models are scored on the same held-out split (the live one may have another
    tokenizer, so its score is recomputed here rather than read from its metrics). Returns
    what happened, for the user.
    """
    registry = ModelRegistry.from_settings(settings)
    live = registry.live()
    added = registry.add(checkpoint)
    new_bpc = float(added.metrics["val_bpc"])
    if live is None:
        registry.set_live(added.version)
        announce_version(settings, registry, added.version)
        return f"published {added.version} ({new_bpc:.3f} bits/char); live (the first model)"
    texts = load_texts(
        opts.data,
        include_bot=opts.include_bot,
        opted_out=opts.opted_out,
        val_fraction=opts.val_fraction,
        split_seed=SPLIT_SEED,
    )
    live_bpc = score_bpc(registry.get(live.version).path, texts.val, opts.cache_dir, device)
    if new_bpc < live_bpc:
        registry.set_live(added.version)
        announce_version(settings, registry, added.version)
        return (
            f"published {added.version}: {new_bpc:.3f} bits/char beats live {live.version}'s "
            f"{live_bpc:.3f}; {added.version} is live now"
        )
    return (
        f"published {added.version}: {new_bpc:.3f} bits/char does not beat live "
        f"{live.version}'s {live_bpc:.3f}; {live.version} stays live"
    )


def score_bpc(
    path: Path, val_texts: list[str], cache_dir: Path | None, device: torch.device
) -> float:
    """A checkpoint's bits per character on ``val_texts``, through its own tokenizer."""
    ckpt = load_checkpoint(path, device=device)
    val: TokenSplit = encode_split(ckpt.tokenizer, val_texts, cache_dir)
    return evaluate_loss(ckpt.model, val, amp_dtype=autocast_dtype(device, "auto")).bpc
