"""What a retrain job's child process is told to do: one JSON file the trainer service writes
into the job's run directory and ``python -m engine.train.retrain`` reads.

The child answers with :class:`bot.wire.JobUpdate` lines on its standard output
(:func:`bot.wire.encode_job_line`); it never touches Redis or the registry, so a crash of
the child can leave nothing half-published.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from bot.errors import ConfigError

SPEC_FILE = "job.json"
MODEL_DIR = "model"
"""The new checkpoint, inside the run directory."""


class RetrainSpec(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    run_dir: str
    archive: str | None
    """The archive's export (Parley JSONL), ``None`` when the archive is empty."""
    corpora: tuple[str, ...] = ()
    """``--data`` specs trained on beside the archive."""
    archive_share: float = 0.5
    opted_out: tuple[str, ...] = ()
    live_model: str | None = None
    """The checkpoint serving now: warm start and the gate's baseline (``None``: none)."""
    live_version: str = ""
    warm_start: bool = True
    preset: str = "default"
    budget_s: float = 600.0
    max_steps: int | None = None
    seed: int = 1337
    val_fraction: float = 0.05
    min_improvement: float = 0.0
    max_corpora_rise: float = 0.05
    cache_dir: str | None = None
    report_every_s: float = 2.0
    """Least time between two progress lines the child prints."""


def write_spec(spec: RetrainSpec) -> Path:
    path = Path(spec.run_dir) / SPEC_FILE
    path.write_bytes(msgspec.json.encode(spec))
    return path


def read_spec(path: Path) -> RetrainSpec:
    try:
        return msgspec.json.decode(path.read_bytes(), type=RetrainSpec)
    except (OSError, msgspec.DecodeError) as e:
        raise ConfigError(f"cannot read the retrain job spec {path}: {e}") from e
