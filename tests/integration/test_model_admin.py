"""Model registry and the admin's model actions: versions v0001…, manifests that refuse a
damaged version, the starter listed as what it is, rollback only where there is somewhere to
go (moving LIVE and announcing it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot import keys, model_admin
from bot.errors import ModelError
from bot.registry import MANIFEST_FILE, STARTER, ModelRegistry


def fake_checkpoint(path: Path, val_loss: float) -> Path:
    """The files a checkpoint has, with placeholder contents (the registry reads no weights)."""
    path.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        (path / name).write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights" * 100)
    (path / "metrics.json").write_text(json.dumps({"val_loss": val_loss}))
    return path


def starter_dir(tmp_path: Path) -> Path:
    return fake_checkpoint(tmp_path / "starter", 3.0)


async def test_versions_are_numbered_with_manifest_and_provenance(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models", starter=starter_dir(tmp_path))
    first = registry.add(fake_checkpoint(tmp_path / "a", 2.0), {"archive": {"messages": 12}})
    second = registry.add(fake_checkpoint(tmp_path / "b", 1.5))
    assert (first.version, second.version) == ("v0001", "v0002")
    assert first.provenance == {"archive": {"messages": 12}}
    manifest = json.loads((first.path / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "metrics.json",
    }
    assert [v.version for v in registry.versions()] == [STARTER, "v0001", "v0002"]
    assert registry.versions()[0].builtin and registry.versions()[0].validation_loss == 3.0


async def test_nothing_published_means_the_starter_is_live(tmp_path: Path, redis) -> None:
    registry = ModelRegistry(tmp_path / "models", starter=starter_dir(tmp_path))
    assert registry.live().version == STARTER
    assert await registry.live_version(redis) == STARTER
    assert registry.previous(STARTER) is None
    with pytest.raises(ModelError, match="no earlier version"):
        await model_admin.rollback(registry, redis, None)


async def test_the_bundled_starter_is_found_without_importing_the_engine(tmp_path: Path) -> None:
    starter = ModelRegistry(tmp_path / "models").starter()
    assert starter is not None and starter.builtin
    assert starter.validation_loss is not None and (starter.path / "model.safetensors").is_file()


async def test_rollback_to_previous_and_named(redis, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models", starter=starter_dir(tmp_path))
    for i in range(3):
        registry.add(fake_checkpoint(tmp_path / f"ck{i}", 2.0 - i / 10))
    registry.set_live("v0003")
    await redis.set(keys.LIVE_MODEL, "v0003")
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.MODELS_CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation

    message = await model_admin.rollback(registry, redis, None)
    assert "v0002" in message
    assert registry.live().version == "v0002"
    assert (await redis.get(keys.LIVE_MODEL)) == b"v0002"
    announced = await pubsub.get_message(timeout=2)
    assert announced and announced["data"] == b"v0002"

    await model_admin.rollback(registry, redis, "v0001")
    await model_admin.rollback(registry, redis, None)
    assert registry.live().version == STARTER  # the starter is somewhere to go back to
    with pytest.raises(ModelError, match="no earlier version"):
        await model_admin.rollback(registry, redis, None)
    with pytest.raises(ModelError, match="no model version"):
        await model_admin.rollback(registry, redis, "v9")
    await pubsub.aclose()


async def test_a_damaged_version_is_refused_and_live_stays(redis, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models", starter=False)
    registry.add(fake_checkpoint(tmp_path / "a", 2.0))
    damaged = registry.add(fake_checkpoint(tmp_path / "b", 1.0))
    registry.set_live("v0001")
    (damaged.path / "model.safetensors").write_bytes(b"weights" * 99 + b"WEIGHTS")
    with pytest.raises(ModelError, match="does not match its checksum"):
        registry.get("v0002")
    with pytest.raises(ModelError, match="damaged"):
        await model_admin.rollback(registry, redis, "v0002")
    assert registry.live().version == "v0001"
    (damaged.path / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="incomplete"):
        registry.set_live("v0002")


async def test_a_half_written_version_is_never_served(tmp_path: Path) -> None:
    models = tmp_path / "models"
    registry = ModelRegistry(models, starter=False)
    incomplete = fake_checkpoint(tmp_path / "a", 2.0)
    (incomplete / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="incomplete"):
        registry.add(incomplete)
    # A copy that died half-way: the hidden staging folder is not a version, and the next
    # add starts it over.
    fake_checkpoint(models / ".incoming-v0001", 1.0)
    (models / ".incoming-v0001" / "tokenizer.json").unlink()
    assert registry.versions() == []
    assert registry.add(fake_checkpoint(tmp_path / "b", 2.0)).version == "v0001"
    # A version copied in by hand, half-way: listed, but never made live.
    fake_checkpoint(models / "v0002", 1.0)
    (models / "v0002" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="incomplete"):
        registry.set_live("v0002")
    assert registry.live().version == "v0001"  # the newest whole one


async def test_retrain_from_the_dashboard_without_a_trainer_says_so(redis) -> None:
    message = await model_admin.request_retrain(redis, timeout_s=0.2)
    assert "trainer service did not answer" in message
    assert await redis.xlen(keys.TRAINER_REQUESTS) == 1  # queued for when it runs
