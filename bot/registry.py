"""The model registry: published versions under one location, which one is live, the
built-in starter model, and the engines' following of swaps.

The location is a local directory (``data_dir/models`` by default) or an fsspec URL
(``models_url``: ``s3://bucket/parley/models``, ``gs://…``, ``file:///…``; ``memory://`` in
tests), so engines on other hosts load the same versions. Layout::

    <location>/
        v0001/  v0002/ ...   checkpoints (safetensors + JSON) as the trainer wrote them, plus
                             MANIFEST.json: each file's size and SHA-256, the version's
                             metrics and data provenance, written last
        LIVE                 one small object: the version engines serve

Publishing (:meth:`ModelRegistry.add`) makes a version visible atomically where the store
allows it. On a local directory the version is copied into a hidden sibling directory, its
manifest written last, and renamed into place. On an object store (no rename) the files go
under the version's name and the manifest goes last: a version without a readable manifest is
half-written and not listed, and the next publish writes over it. ``LIVE`` is written last, as
one object (locally: a temporary file renamed over it).

:meth:`ModelRegistry.get` checks every file against the manifest, so a damaged version is
refused with :class:`~bot.errors.ModelError` and the engines keep serving what they serve.
From a URL, ``get`` first copies the version into a local cache directory (a hidden temporary
directory, checked, then renamed), and serves that copy. Local versions written before
manifests existed (``v1``, ``v2`` …) are listed and served as they are.

The model that serves before any training — the starter shipped in ``engine/starter`` — is
listed as version ``starter`` (number 0): ``/model`` and the dashboard show it with its
validation figures, and ``/rollback`` can return to it.

The trainer publishes by adding a version, moving ``LIVE`` and announcing the version
(:meth:`ModelRegistry.announce`: :data:`bot.keys.LIVE_MODEL` and
:data:`bot.keys.MODELS_CHANNEL`); :func:`follow_live` is the engines' side of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import redis.asyncio as aioredis
from fsspec.implementations.local import LocalFileSystem

from bot import keys
from bot.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

LIVE_FILE = "LIVE"
MANIFEST_FILE = "MANIFEST.json"
STARTER = "starter"
"""The version name of the built-in starter model."""
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
"""Files a servable checkpoint must have."""
LOSS_KEYS = ("val_loss", "validation_loss", "eval_loss", "loss")
"""Where a version's ``metrics.json`` may keep its validation loss, most specific first."""
PLOT_FILE = "loss.png"
_VERSION_RE = re.compile(r"^v(\d+)$")
_PLAIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HASH_CHUNK = 1 << 20
CACHE_KEEP = 3
"""Versions a URL registry's local cache keeps: the one just copied and the newest others;
the rest are deleted when a version is copied in."""
_PLOTS_DIR = ".plots"


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
    """Its local directory; from a URL, the cache copy, there once :meth:`ModelRegistry.get`
    has fetched it."""
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


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
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
    metrics = _read_json(directory / "metrics.json")
    return {"format": 1, "files": files, "added": time.time(), "metrics": metrics, **extra}


def _has_checkpoint_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in CHECKPOINT_FILES)


def verify(directory: Path, *, name: str | None = None, require_manifest: bool = False) -> None:
    """Raise :class:`ModelError` unless ``directory`` is a whole checkpoint whose files match
    its manifest (a directory without a manifest needs only the checkpoint files, unless
    ``require_manifest``). ``name``: what the errors call it (default: the directory's name)."""
    label = name or directory.name
    missing = [n for n in CHECKPOINT_FILES if not (directory / n).is_file()]
    if missing:
        raise ModelError(f"{label} is incomplete: missing {', '.join(missing)}")
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.exists():
        if require_manifest:
            raise ModelError(f"{label} is incomplete: it has no {MANIFEST_FILE}")
        return
    files = _read_json(manifest_path).get("files")
    if not isinstance(files, dict) or not files:
        raise ModelError(f"{label} is damaged: its {MANIFEST_FILE} is unreadable")
    for file_name, entry in files.items():
        path = directory / file_name
        if not path.is_file():
            raise ModelError(f"{label} is damaged: {file_name} is missing")
        if not isinstance(entry, dict) or path.stat().st_size != entry.get("size"):
            raise ModelError(f"{label} is damaged: {file_name} has the wrong size")
        if file_digest(path) != entry.get("sha256"):
            raise ModelError(f"{label} is damaged: {file_name} does not match its checksum")


def open_location(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and root path of a registry location (a path or a URL);
    :class:`ConfigError` for an unknown scheme or a backend that is not installed."""
    try:
        fs, root = fsspec.core.url_to_fs(location)
    except ImportError as e:  # s3fs, gcsfs, adlfs …: the user's optional install
        raise ConfigError(f"models_url {location!r} needs a package: {e}") from e
    except ValueError as e:
        raise ConfigError(f"models_url {location!r}: {e}") from e
    return fs, str(root).rstrip("/") or "/"


class ModelRegistry:
    """Versions of the model at a local path or an fsspec URL, which one is live, and the
    built-in starter."""

    def __init__(
        self,
        location: Path | str,
        *,
        cache_dir: Path | None = None,
        starter: Path | bool | None = True,
    ) -> None:
        """``location``: a directory or an fsspec URL. ``cache_dir``: where versions from a
        URL are copied before use (required for a URL that is not a local path).
        ``starter``: the starter model's directory; ``True`` finds the bundled one, ``False``
        or ``None`` lists none."""
        self.location = str(location)
        if isinstance(location, Path):  # a path as it is: no URL parsing of its characters
            self._fs, self._root = LocalFileSystem(), str(location)
        else:
            self._fs, self._root = open_location(location)
        self.remote = not isinstance(self._fs, LocalFileSystem)
        if not self.remote:
            self.models_dir = location if isinstance(location, Path) else Path(self._root)
        elif cache_dir is None:
            raise ConfigError(f"the model registry at {self.location} needs a local cache_dir")
        else:
            self.models_dir = cache_dir
        """The local directory of the versions: the registry itself, or the cache of a URL's."""
        if starter is True:
            self.starter_dir = bundled_starter()
        else:
            self.starter_dir = starter if isinstance(starter, Path) else None

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry at ``models_url`` (else ``data_dir/models``), caching in
        ``data_dir/model-cache``."""
        location = settings.models_url or settings.models_dir
        return cls(location, cache_dir=settings.models_cache_dir)

    def starter(self) -> ModelVersion | None:
        """The built-in starter model as a version (number 0), if this install has one."""
        path = self.starter_dir
        if path is None or not (path / "config.json").is_file():
            return None
        plot = path / PLOT_FILE
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
        found = self._remote_versions() if self.remote else self._local_versions()
        return sorted(found, key=lambda v: v.number)

    def _local_versions(self) -> list[ModelVersion]:
        if not self.models_dir.is_dir():
            return []
        found = []
        for path in self.models_dir.iterdir():
            if not (_VERSION_RE.match(path.name) and (path / "config.json").is_file()):
                continue
            plot = path / PLOT_FILE
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
        return found

    def _remote_versions(self) -> list[ModelVersion]:
        """The URL's versions that have a readable manifest (the rest are half-written)."""
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(self._root, False)]
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ModelError(f"cannot list the model registry at {self.location}: {e}") from e
        found = []
        for name in filter(_VERSION_RE.match, names):
            manifest = self._remote_manifest(name)
            if manifest is None:
                continue
            found.append(
                ModelVersion(
                    version=name,
                    path=self.models_dir / name,
                    created=float(manifest.get("added") or 0.0),
                    metrics=manifest.get("metrics") or {},
                    loss_plot=self._remote_plot(name, manifest),
                    provenance=manifest.get("provenance") or {},
                )
            )
        return found

    def _remote_manifest(self, name: str) -> dict[str, Any] | None:
        try:
            manifest = _parse_json(self._fs.cat_file(f"{self._root}/{name}/{MANIFEST_FILE}"))
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot read the manifest of %s at %s: %s", name, self.location, e)
            return None
        return manifest if isinstance(manifest.get("files"), dict) else None

    def _remote_plot(self, name: str, manifest: dict[str, Any]) -> Path | None:
        """The version's loss plot, copied into the cache once (for the dashboard)."""
        if PLOT_FILE not in manifest["files"]:
            return None
        target = self.models_dir / _PLOTS_DIR / f"{name}.png"
        for path in (self.models_dir / name / PLOT_FILE, target):
            if path.is_file():
                return path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            self._fs.get_file(f"{self._root}/{name}/{PLOT_FILE}", str(tmp))
            os.replace(tmp, target)
        except OSError as e:
            log.warning("cannot copy the loss plot of %s from %s: %s", name, self.location, e)
            tmp.unlink(missing_ok=True)
            return None
        return target

    def versions(self) -> list[ModelVersion]:
        """The starter (if any), then every published version, oldest first."""
        starter = self.starter()
        return ([starter] if starter else []) + self.published()

    def find(self, version: str) -> ModelVersion | None:
        return next((v for v in self.versions() if v.version == version), None)

    def get(self, version: str) -> ModelVersion:
        """``version``, checked whole and undamaged, in a local directory (from a URL: copied
        into the cache first); :class:`ModelError` otherwise."""
        found = self.find(version)
        if found is None:
            raise ModelError(f"no model version {version!r} in {self.location}")
        if found.builtin or not self.remote:
            verify(found.path)
            return found
        return replace(found, path=self._fetch(found.version))

    def _fetch(self, name: str) -> Path:
        """The cache copy of version ``name``, copied from the URL and checked against its
        manifest unless a checked copy is there already."""
        target = self.models_dir / name
        if target.is_dir():
            try:
                verify(target, require_manifest=True)
                return target
            except ModelError as e:
                log.warning("cached copy of %s refused (%s); copying it again", name, e)
                shutil.rmtree(target, ignore_errors=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".incoming-{name}-", dir=self.models_dir))
        try:
            self._download(name, tmp)
            verify(tmp, name=f"{name} (from {self.location})", require_manifest=True)
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.is_dir():  # another engine on this host put its copy there
                    raise
        except OSError as e:
            raise ModelError(f"cannot copy {name} from {self.location}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("copied model version %s from %s into %s", name, self.location, target)
        self._prune_cache(keep=name)
        return target

    def _prune_cache(self, keep: str) -> None:
        """Keep ``keep`` and the newest others, :data:`CACHE_KEEP` in all; delete the rest. An
        engine reads a version's files only while loading it, then serves from memory."""
        others = sorted(
            (int(m.group(1)), path)
            for path in self.models_dir.iterdir()
            if path.is_dir() and path.name != keep and (m := _VERSION_RE.match(path.name))
        )
        for _, path in others[: max(0, len(others) - (CACHE_KEEP - 1))]:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed cached model version %s (another one arrived)", path.name)

    def _download(self, name: str, into: Path) -> None:
        remote = f"{self._root}/{name}"
        raw = self._fs.cat_file(f"{remote}/{MANIFEST_FILE}")
        files = _parse_json(raw).get("files")
        if not isinstance(files, dict) or not files:
            raise ModelError(f"{name} is damaged: its {MANIFEST_FILE} is unreadable")
        for file_name in files:
            if not _PLAIN_NAME_RE.match(file_name) or file_name == MANIFEST_FILE:
                raise ModelError(f"{name} is damaged: its manifest names {file_name!r}")
            self._fs.get_file(f"{remote}/{file_name}", str(into / file_name))
        (into / MANIFEST_FILE).write_bytes(raw)

    def live(self) -> ModelVersion | None:
        """The version named in ``LIVE``; without one (nothing was ever made live), the
        built-in starter, else the newest whole version."""
        name = self._read_live()
        if name:
            found = self.find(name)
            if found is not None:
                return found
            log.warning("LIVE names %s, which is not in %s", name, self.location)
        whole = [v for v in self.versions() if self._is_whole(v)]
        starter = [v for v in whole if v.builtin]
        if starter:  # a version added but never made live (the gate kept it out) is not live
            return starter[0]
        return whole[-1] if whole else None

    def _is_whole(self, version: ModelVersion) -> bool:
        # A URL lists only versions whose manifest, written last, is there.
        return _has_checkpoint_files(version.path) if version.builtin or not self.remote else True

    def _read_live(self) -> str | None:
        try:
            if self.remote:
                raw = self._fs.cat_file(f"{self._root}/{LIVE_FILE}")
                return raw.decode("utf-8", "replace").strip() or None
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
        number = max((v.number for v in self.published()), default=0) + 1
        name = version_name(number)
        extra = {"provenance": provenance or {}}
        if self.remote:
            self._upload(checkpoint_dir, name, _manifest(checkpoint_dir, extra))
        else:
            self._copy_in(checkpoint_dir, name, extra)
        log.info("added model version %s from %s to %s", name, checkpoint_dir, self.location)
        return self.get(name)

    def _copy_in(self, checkpoint_dir: Path, name: str, extra: dict[str, Any]) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.models_dir / f".incoming-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint_dir, tmp, ignore=shutil.ignore_patterns(MANIFEST_FILE))
        manifest = _manifest(tmp, extra)
        _write_synced(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, self.models_dir / name)

    def _upload(self, checkpoint_dir: Path, name: str, manifest: dict[str, Any]) -> None:
        """The files under ``name``, then the manifest: until it is there, the version is
        half-written and not listed (a leftover of an earlier attempt is removed first)."""
        remote = f"{self._root}/{name}"
        try:
            if self._fs.exists(remote):
                self._fs.rm(remote, recursive=True)
            for file_name in manifest["files"]:
                self._fs.put_file(str(checkpoint_dir / file_name), f"{remote}/{file_name}")
            body = (json.dumps(manifest, indent=2) + "\n").encode()
            self._fs.pipe_file(f"{remote}/{MANIFEST_FILE}", body)
        except OSError as e:
            raise ModelError(f"cannot publish {name} to {self.location}: {e}") from e

    def set_live(self, version: str) -> ModelVersion:
        """Point ``LIVE`` at ``version`` (atomically), after checking it is whole."""
        chosen = self.get(version)
        if self.remote:
            try:
                self._fs.pipe_file(f"{self._root}/{LIVE_FILE}", (version + "\n").encode())
            except OSError as e:
                raise ModelError(f"cannot write {LIVE_FILE} at {self.location}: {e}") from e
            return chosen
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
        """The live version as engines see it: Redis first, then ``LIVE``, then the newest
        version, then the starter."""
        value = await redis.get(keys.LIVE_MODEL)
        if value:
            return _text(value)
        live = await asyncio.to_thread(self.live)
        return live.version if live else None


SwapTo = Callable[[ModelVersion], Awaitable[None]]
"""Loads a checked version and swaps it in (the engine's side); may raise ModelError."""


async def follow_live(
    registry: ModelRegistry,
    redis: aioredis.Redis,
    swap_to: SwapTo,
    *,
    serving: str | None = None,
) -> None:
    """Swap to every version announced on :data:`bot.keys.MODELS_CHANNEL` until cancelled.

    ``serving``: the version the caller serves now; a different :data:`bot.keys.LIVE_MODEL`
    found once subscribed (announced while the caller was loading) is swapped to first, and
    an announcement of the version already served is skipped. A version that cannot be
    fetched, is damaged, or that ``swap_to`` refuses is logged, and the caller keeps serving
    what it serves.
    """
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.MODELS_CHANNEL)
    current = serving
    try:
        if serving is not None:
            live = await redis.get(keys.LIVE_MODEL)
            if live and _text(live) != serving:
                current = await _swap(registry, _text(live), swap_to, current)
        async for message in pubsub.listen():
            if message.get("type") == "message" and _text(message["data"]) != current:
                current = await _swap(registry, _text(message["data"]), swap_to, current)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _swap(
    registry: ModelRegistry, version: str, swap_to: SwapTo, current: str | None
) -> str | None:
    """Fetch, check and swap to ``version``; the version served afterwards."""
    try:
        found = await asyncio.to_thread(registry.get, version)
        await swap_to(found)
    except ModelError as e:
        log.error("cannot swap to %s: %s; still serving %s", version, e, current)
        return current
    except Exception:
        log.exception("cannot swap to %s; still serving %s", version, current)
        return current
    return version


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _write_synced(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
