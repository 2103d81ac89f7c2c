"""The model registry: checkpoint directories under ``models_dir``, one per version.

Layout::

    models_dir/
        v1/  v2/  ...        checkpoints (safetensors + JSON), written by the trainer
        LIVE                 text file: the version engines serve

The registry is plain files so that the web adapter can list versions without torch; the
trainer publishes by copying a checkpoint in and moving ``LIVE``, then announcing the new
version on :data:`bot.keys.MODELS_CHANNEL` so running engines hot-swap.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot import keys
from bot.errors import ModelError

log = logging.getLogger(__name__)

LIVE_FILE = "LIVE"
LOSS_KEYS = ("val_loss", "validation_loss", "eval_loss", "loss")
"""Where a version's ``metrics.json`` may keep its validation loss, most specific first."""
_VERSION_RE = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    created: float
    metrics: dict[str, Any] = field(default_factory=dict)
    loss_plot: Path | None = None

    @property
    def validation_loss(self) -> float | None:
        """The validation loss the trainer recorded in ``metrics.json``, if any."""
        for key in LOSS_KEYS:
            value = self.metrics.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        return None

    @property
    def number(self) -> int:
        m = _VERSION_RE.match(self.version)
        return int(m.group(1)) if m else 0


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class ModelRegistry:
    """Versions of the model on disk and which one is live."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir

    def versions(self) -> list[ModelVersion]:
        """Every published version, oldest first."""
        if not self.models_dir.is_dir():
            return []
        found = []
        for path in self.models_dir.iterdir():
            if not (_VERSION_RE.match(path.name) and (path / "config.json").is_file()):
                continue
            plot = path / "loss.png"
            found.append(
                ModelVersion(
                    version=path.name,
                    path=path,
                    created=path.stat().st_mtime,
                    metrics=_read_json(path / "metrics.json"),
                    loss_plot=plot if plot.is_file() else None,
                )
            )
        return sorted(found, key=lambda v: v.number)

    def get(self, version: str) -> ModelVersion:
        for v in self.versions():
            if v.version == version:
                return v
        raise ModelError(f"no model version {version!r} in {self.models_dir}")

    def live(self) -> ModelVersion | None:
        """The version named in ``LIVE``, else the newest, else ``None``."""
        name = self._read_live()
        versions = self.versions()
        if name:
            for v in versions:
                if v.version == name:
                    return v
            log.warning("LIVE names %s, which is not in %s", name, self.models_dir)
        return versions[-1] if versions else None

    def _read_live(self) -> str | None:
        try:
            return (self.models_dir / LIVE_FILE).read_text().strip() or None
        except OSError:
            return None

    def add(self, checkpoint_dir: Path) -> ModelVersion:
        """Copy a checkpoint in as the next version (not yet live)."""
        if not (checkpoint_dir / "config.json").is_file():
            raise ModelError(f"{checkpoint_dir} is not a checkpoint (no config.json)")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        number = max((v.number for v in self.versions()), default=0) + 1
        target = self.models_dir / f"v{number}"
        tmp = self.models_dir / f".incoming-v{number}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint_dir, tmp)
        os.replace(tmp, target)
        return self.get(target.name)

    def set_live(self, version: str) -> ModelVersion:
        """Point ``LIVE`` at ``version`` (atomically)."""
        chosen = self.get(version)
        tmp = self.models_dir / f".{LIVE_FILE}.tmp"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.models_dir / LIVE_FILE)
        return chosen

    async def announce(self, redis: aioredis.Redis, version: str) -> None:
        """Tell running engines to swap to ``version``."""
        await redis.set(keys.LIVE_MODEL, version)
        await redis.publish(keys.MODELS_CHANNEL, version)

    async def live_version(self, redis: aioredis.Redis) -> str | None:
        """The live version as engines see it: Redis first, then the ``LIVE`` file."""
        value = await redis.get(keys.LIVE_MODEL)
        if value:
            return value.decode() if isinstance(value, bytes) else str(value)
        live = self.live()
        return live.version if live else None
