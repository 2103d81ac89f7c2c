"""A run's resumable state on disk: ``out/train_state/``, and the checkpoint beside it.

Every evaluation writes the current weights and optimizer moments (safetensors), and the
step, clock and loss history (:class:`Progress`, JSON) — never pickle. Started again with the
same ``out``, the trainer continues from there; once the run has finished the state is removed.
The state directory is replaced atomically (written beside it, then renamed), so a crash while
saving leaves the previous state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from bot.errors import ModelError
from engine.checkpoint import save_checkpoint
from engine.models import LanguageModel
from engine.tokenizer import Tokenizer, load_tokenizer

STATE_DIR = "train_state"
WEIGHTS_FILE = "model.safetensors"
_STATE_FILE = "state.json"
_OPTIMIZER_FILE = "optimizer.safetensors"
_STATE_FORMAT = 1


@dataclass
class Progress:
    """Everything about a run's position that is not a tensor; saved as JSON."""

    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    step_time_s: float = 0.0
    """Time spent in optimizer steps (tokens/s excludes evaluations)."""
    best_val_loss: float = math.inf
    best_step: int = 0
    evals_since_best: int = 0
    stopped: str = ""
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    pending: list[float] = field(default_factory=list)
    """Train losses since the last curve point."""


def save_state(
    out: Path,
    model: LanguageModel,
    optimizer: torch.optim.Optimizer,
    tokenizer: Tokenizer,
    *,
    preset: str,
    progress: Progress,
) -> None:
    """Write the run's state to ``out/train_state/``, replacing the previous one atomically."""
    state = {
        "format": _STATE_FORMAT,
        "model": model.config.to_dict(),
        "preset": preset,
        "progress": dataclasses.asdict(progress),
        "param_groups": _param_groups_json(optimizer),
    }
    final = out / STATE_DIR
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{STATE_DIR}.", dir=out))
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        save_file(_optimizer_tensors(optimizer), str(tmp / _OPTIMIZER_FILE))
        tokenizer.save(tmp)
        (tmp / _STATE_FILE).write_text(json.dumps(state, indent=1))
        old = out / f".{STATE_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state(
    path: Path, model: LanguageModel, optimizer: torch.optim.Optimizer, device: torch.device
) -> Progress:
    """Load the state in ``path`` into ``model`` and ``optimizer``; returns the run's progress.

    A state saved for another model configuration is a :class:`ModelError`.
    """
    state = _read_state(path)
    if state["model"] != model.config.to_dict():
        raise ModelError(
            f"{path}: this training state is for a different model "
            f"({state.get('preset')}); use another --out, or --overwrite to start over"
        )
    load_model(model, str(path / WEIGHTS_FILE), device=str(device))
    groups = state["param_groups"]
    tensors = load_file(str(path / _OPTIMIZER_FILE), device=str(device))
    optimizer.load_state_dict(_optimizer_state_dict(tensors, groups))
    progress = state["progress"]
    progress["train_curve"] = [tuple(x) for x in progress["train_curve"]]
    progress["val_curve"] = [tuple(x) for x in progress["val_curve"]]
    return Progress(**progress)


def save_checkpoint_beside_state(
    out: Path,
    model: nn.Module,
    tokenizer: Tokenizer,
    *,
    preset: str,
    metrics: dict[str, Any],
    provenance: dict[str, Any],
    extra_files: Sequence[Path] = (),
) -> None:
    """Save ``model`` as the checkpoint in ``out``, keeping the training state beside it."""
    # save_checkpoint replaces the whole directory, train_state with it; park it next door.
    state, parked = out / STATE_DIR, _parked_state(out)
    if state.is_dir():
        shutil.rmtree(parked, ignore_errors=True)
        os.replace(state, parked)
    save_checkpoint(
        out, model, tokenizer, preset=preset, metrics=metrics, provenance=provenance,
        overwrite=True, extra_files=extra_files,
    )  # fmt: skip
    if parked.is_dir():
        os.replace(parked, state)


def remove_state(out: Path) -> None:
    """The run has finished: its resumable state goes."""
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)


def find_state(out: Path) -> Path | None:
    """The training state of an unfinished run in ``out``, if there is one."""
    for path in (Path(out) / STATE_DIR, _parked_state(Path(out))):
        if (path / _STATE_FILE).is_file():
            return path
    return None


def saved_tokenizer(out: Path) -> Tokenizer | None:
    """The tokenizer an unfinished run in ``out`` was training with."""
    path = find_state(out)
    return load_tokenizer(path) if path is not None else None


def _parked_state(out: Path) -> Path:
    return out.parent / f".{out.name}.{STATE_DIR}"


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / _STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read training state: {e}") from e
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ModelError(f"{path}: unsupported training state format")
    return state


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The optimizer's per-parameter state as flat ``"<param index>.<name>"`` tensors."""
    tensors = {}
    for index, slots in optimizer.state_dict()["state"].items():
        for name, value in slots.items():
            tensors[f"{index}.{name}"] = value.detach().contiguous()
    return tensors


def _param_groups_json(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    groups = optimizer.state_dict()["param_groups"]
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]


def _optimizer_state_dict(
    tensors: dict[str, Tensor], groups: list[dict[str, Any]]
) -> dict[str, Any]:
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for g in groups:
        g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}
