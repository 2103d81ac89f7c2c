"""Checkpoints: the one format the trainer writes and the engine loads.

A checkpoint is a directory named after its version::

    model.safetensors   weights; a tied matrix is stored once, under its first name
    config.json         {"format": 1, "preset": ..., "model": ModelConfig.to_dict()}
    tokenizer.json      see engine.tokenizer
    metrics.json        free-form, from the trainer (optional when loading)
    provenance.json     free-form, from the trainer (optional when loading)
    replies.jsonl.gz    the training conversations, for remembered replies (optional;
                        see engine.data.remembered)

It is written into a temporary sibling directory and renamed into place, so a reader never
sees half a checkpoint. Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bot.errors import ModelError
from engine.models import LanguageModel, build_model
from engine.models.config import ModelConfig
from engine.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
PROVENANCE_FILE = "provenance.json"
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE)


@dataclass(frozen=True)
class Checkpoint:
    model: LanguageModel  # in eval mode
    tokenizer: Tokenizer
    config: ModelConfig
    preset: str
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    path: Path

    @property
    def version(self) -> str:
        return self.path.name


# ----------------------------------------------------------------------------------- saving


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    tokenizer: Tokenizer,
    *,
    preset: str,
    metrics: dict[str, Any],
    provenance: dict[str, Any],
    overwrite: bool = False,
    extra_files: Sequence[Path] = (),
) -> Path:
    """Write a checkpoint to ``directory`` atomically and return its path.

    ``model`` may be wrapped by ``torch.compile`` or DDP. An existing ``directory`` is an
    error unless ``overwrite``, in which case it is replaced. ``extra_files`` are copied in
    under their own names (the remembered replies, :mod:`engine.data.remembered`).
    """
    final = Path(directory)
    lm = _unwrap(model)
    if final.exists() and not overwrite:
        raise ModelError(f"{final}: a checkpoint already exists there")
    if lm.config.vocab_size < tokenizer.vocab_size:
        raise ModelError(
            f"model vocab_size {lm.config.vocab_size} < tokenizer's {tokenizer.vocab_size}"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        save_file(_tensors_to_save(lm), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        config = {"format": FORMAT_VERSION, "preset": preset, "model": lm.config.to_dict()}
        _write_json(tmp / CONFIG_FILE, config)
        tokenizer.save(tmp)
        _write_json(tmp / METRICS_FILE, metrics)
        _write_json(tmp / PROVENANCE_FILE, provenance)
        for extra in extra_files:
            shutil.copyfile(extra, tmp / extra.name)
        _fsync_files(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved checkpoint %s (%s, %d params)", final, preset, lm.num_params())
    return final


def _unwrap(model: nn.Module) -> LanguageModel:
    # torch.compile keeps the original module in _orig_mod, DDP in .module.
    while not isinstance(model, LanguageModel):
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            raise ModelError(f"cannot save a {type(model).__name__}: not a Parley model")
        model = inner
    return model


def _tensors_to_save(model: nn.Module) -> dict[str, Tensor]:
    """The state dict with each shared tensor once (safetensors refuses aliases)."""
    tensors: dict[str, Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:  # e.g. lm_head.weight, tied to wte.weight which came first
            continue
        seen.add(key)
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors


def _write_json(path: Path, data: dict[str, Any]) -> None:
    def scalar(o: Any) -> Any:  # numpy / torch scalars from a training loop
        if hasattr(o, "item"):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"{type(o).__name__} is not JSON-serializable")

    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, default=scalar)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{path.name}: {e}") from e
    path.write_text(text + "\n", encoding="utf-8")


def _fsync_files(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _replace_dir(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    # Renaming over a non-empty directory fails, so move the old one aside first.
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------- loading


def load_checkpoint(
    directory: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Checkpoint:
    """Load a checkpoint for inference or for warm-starting training."""
    path = Path(directory)
    if not path.is_dir():
        raise ModelError(f"{path}: checkpoint directory not found")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ModelError(f"{path}: not a complete checkpoint, missing {', '.join(missing)}")
    meta = _read_json(path / CONFIG_FILE)
    if meta.get("format") != FORMAT_VERSION or not isinstance(meta.get("model"), dict):
        raise ModelError(f"{path / CONFIG_FILE}: unsupported format {meta.get('format')!r}")
    config = ModelConfig.from_dict(meta["model"])
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens, model only {config.vocab_size}"
        )
    model = build_model(config)
    _load_weights(model, path / MODEL_FILE)
    model.to(device=device, dtype=dtype)
    model.eval()
    return Checkpoint(
        model=model,
        tokenizer=tokenizer,
        config=config,
        preset=str(meta.get("preset", "")),
        metrics=_read_json(path / METRICS_FILE, optional=True),
        provenance=_read_json(path / PROVENANCE_FILE, optional=True),
        path=path,
    )


def _load_weights(model: nn.Module, path: Path) -> None:
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{path}: cannot read weights: {e}") from e
    expected = {name: tuple(t.shape) for name, t in _tensors_to_save(model).items()}
    problems = [f"missing {n}" for n in expected if n not in tensors]
    problems += [f"unexpected {n}" for n in tensors if n not in expected]
    problems += [
        f"{n}: shape {tuple(t.shape)} in file, {expected[n]} in model"
        for n, t in tensors.items()
        if n in expected and tuple(t.shape) != expected[n]
    ]
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ModelError(
            f"{path}: weights do not match config.json: {'; '.join(problems[:5])}{more}"
        )
    model.load_state_dict(tensors, strict=False)  # the tied aliases are the only keys absent


def _read_json(path: Path, optional: bool = False) -> dict[str, Any]:
    if optional and not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: cannot read: {e}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data
