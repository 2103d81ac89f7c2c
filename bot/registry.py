"""The model registry: published versions under ``models_dir``, which one is live, and the
built-in starter model.

Layout::

    models_dir/
        v0001/  v0002/ ...   checkpoints (safetensors + JSON) as the trainer wrote them, plus
                             MANIFEST.json: each file's size and SHA-256, the version's
                             metrics and data provenance, written last
        LIVE                 text file: the version engines serve

A version is copied into a hidden sibling directory, its manifest written last, and renamed
into place, so a reader never sees half of one; :meth:`ModelRegistry.get` checks every file
against the manifest, so a version damaged afterwards (or copied in by hand, half-way) is
refused with :class:`~bot.errors.ModelError` and the engines keep serving what they serve.
Versions written before manifests existed (``v1``, ``v2`` …) are listed and served as they are.

The model that serves before any training — the starter shipped in ``engine/starter`` — is
listed as version ``starter`` (number 0): ``/model`` and the dashboard show it with its
validation figures, and ``/rollback`` can return to it.

The registry is plain local files (a directory that hosts may share over NFS); it reads no
object-store URLs. The trainer publishes by adding a version, moving ``LIVE`` (atomically: a
rename) and announcing the version on :data:`bot.keys.MODELS_CHANNEL`, so running engines
hot-swap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot import keys
from bot.errors import ModelError

log = logging.getLogger(__name__)

LIVE_FILE = "LIVE"
MANIFEST_FILE = "MANIFEST.json"
STARTER = "starter"
"""The version name of the built-in starter model."""
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
"""Files a servable checkpoint must have."""
LOSS_KEYS = ("val_loss", "validation_loss", "eval_loss", "loss")
"""Where a version's ``metrics.json`` may keep its validation loss, most specific first."""
_VERSION_RE = re.compile(r"^v(\d+)$")
_HASH_CHUNK = 1 << 20


def bundled_starter() -> Path | None:
    """The starter model directory shipped in the ``engine`` package, found without importing
    it (an adapter host has no torch); ``None`` if this install has none."""
    spec = importlib.util.find_spec("engine")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "starter"
        if (path / "config.json").is_file():
            return path
    return None


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    created: float
    metrics: dict[str, Any] = field(default_factory=dict)
    loss_plot: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    builtin: bool = False
    """The starter model shipped with Parley, not a version the owner trained."""

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


def version_name(number: int) -> str:
    return f"v{number:04d}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _manifest(directory: Path, extra: dict[str, Any]) -> dict[str, Any]:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }
    return {"format": 1, "files": files, "added": time.time(), **extra}


def _has_checkpoint_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in CHECKPOINT_FILES)


def verify(directory: Path) -> None:
    """Raise :class:`ModelError` unless ``directory`` is a whole checkpoint whose files match
    its manifest (a directory without a manifest needs only the checkpoint files)."""
    missing = [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]
    if missing:
        raise ModelError(f"{directory.name} is incomplete: missing {', '.join(missing)}")
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.exists():
        return
    files = _read_json(manifest_path).get("files")
    if not isinstance(files, dict) or not files:
        raise ModelError(f"{directory.name} is damaged: its {MANIFEST_FILE} is unreadable")
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            raise ModelError(f"{directory.name} is damaged: {name} is missing")
        if not isinstance(entry, dict) or path.stat().st_size != entry.get("size"):
            raise ModelError(f"{directory.name} is damaged: {name} has the wrong size")
        if file_digest(path) != entry.get("sha256"):
            raise ModelError(f"{directory.name} is damaged: {name} does not match its checksum")


class ModelRegistry:
    """Versions of the model on disk, which one is live, and the built-in starter."""

    def __init__(self, models_dir: Path, *, starter: Path | bool | None = True) -> None:
        """``starter``: the starter model's directory; ``True`` finds the bundled one,
        ``False`` or ``None`` lists none."""
        self.models_dir = models_dir
        if starter is True:
            self.starter_dir = bundled_starter()
        else:
            self.starter_dir = starter if isinstance(starter, Path) else None

    def starter(self) -> ModelVersion | None:
        """The built-in starter model as a version (number 0), if this install has one."""
        path = self.starter_dir
        if path is None or not (path / "config.json").is_file():
            return None
        plot = path / "loss.png"
        return ModelVersion(
            version=STARTER,
            path=path,
            created=(path / "config.json").stat().st_mtime,
            metrics=_read_json(path / "metrics.json"),
            loss_plot=plot if plot.is_file() else None,
            provenance=_read_json(path / "provenance.json"),
            builtin=True,
        )

    def published(self) -> list[ModelVersion]:
        """Every version the owner's training published, oldest first (no starter)."""
        if not self.models_dir.is_dir():
            return []
        found = []
        for path in self.models_dir.iterdir():
            if not (_VERSION_RE.match(path.name) and (path / "config.json").is_file()):
                continue
            plot = path / "loss.png"
            manifest = _read_json(path / MANIFEST_FILE)
            found.append(
                ModelVersion(
                    version=path.name,
                    path=path,
                    created=float(manifest.get("added") or path.stat().st_mtime),
                    metrics=_read_json(path / "metrics.json"),
                    loss_plot=plot if plot.is_file() else None,
                    provenance=manifest.get("provenance") or _read_json(path / "provenance.json"),
                )
            )
        return sorted(found, key=lambda v: v.number)

    def versions(self) -> list[ModelVersion]:
        """The starter (if any), then every published version, oldest first."""
        starter = self.starter()
        return ([starter] if starter else []) + self.published()

    def find(self, version: str) -> ModelVersion | None:
        return next((v for v in self.versions() if v.version == version), None)

    def get(self, version: str) -> ModelVersion:
        """``version``, checked whole and undamaged; :class:`ModelError` otherwise."""
        found = self.find(version)
        if found is None:
            raise ModelError(f"no model version {version!r} in {self.models_dir}")
        verify(found.path)
        return found

    def live(self) -> ModelVersion | None:
        """The version named in ``LIVE``, else the newest whole one, else the starter."""
        name = self._read_live()
        if name:
            found = self.find(name)
            if found is not None:
                return found
            log.warning("LIVE names %s, which is not in %s", name, self.models_dir)
        whole = [v for v in self.versions() if _has_checkpoint_files(v.path)]
        return whole[-1] if whole else None

    def _read_live(self) -> str | None:
        try:
            return (self.models_dir / LIVE_FILE).read_text().strip() or None
        except OSError:
            return None

    def previous(self, live: str | None) -> ModelVersion | None:
        """The version ``/rollback`` without an argument returns to: the newest one older
        than ``live`` (the starter counts); ``None`` when there is nowhere to go."""
        current = self.find(live) if live else None
        if current is None:
            return None
        older = [v for v in self.versions() if v.number < current.number]
        return older[-1] if older else None

    def add(self, checkpoint_dir: Path, provenance: dict[str, Any] | None = None) -> ModelVersion:
        """Copy a checkpoint in as the next version (not yet live); ``provenance`` (what data
        trained it) goes into its manifest."""
        verify(checkpoint_dir)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        number = max((v.number for v in self.published()), default=0) + 1
        target = self.models_dir / version_name(number)
        tmp = self.models_dir / f".incoming-{target.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint_dir, tmp, ignore=shutil.ignore_patterns(MANIFEST_FILE))
        manifest = _manifest(tmp, {"provenance": provenance or {}})
        _write_synced(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, target)
        log.info("added model version %s from %s", target.name, checkpoint_dir)
        return self.get(target.name)

    def set_live(self, version: str) -> ModelVersion:
        """Point ``LIVE`` at ``version`` (atomically), after checking it is whole."""
        chosen = self.get(version)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.models_dir / f".{LIVE_FILE}.tmp"
        _write_synced(tmp, version + "\n")
        os.replace(tmp, self.models_dir / LIVE_FILE)
        return chosen

    async def announce(self, redis: aioredis.Redis, version: str) -> None:
        """Tell running engines to swap to ``version``."""
        await redis.set(keys.LIVE_MODEL, version)
        await redis.publish(keys.MODELS_CHANNEL, version)

    async def live_version(self, redis: aioredis.Redis) -> str | None:
        """The live version as engines see it: Redis first, then the ``LIVE`` file, then the
        newest version, then the starter."""
        value = await redis.get(keys.LIVE_MODEL)
        if value:
            return value.decode() if isinstance(value, bytes) else str(value)
        live = self.live()
        return live.version if live else None


def _write_synced(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
