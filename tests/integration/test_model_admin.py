"""Dashboard model actions: rollback moves LIVE and announces; one retrain at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot import keys, model_admin
from bot.errors import ModelError
from bot.registry import ModelRegistry
from bot.settings import Settings


def fake_checkpoint(path: Path, val_loss: float) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "metrics.json").write_text(json.dumps({"val_loss": val_loss}))
    return path


async def test_rollback_to_previous_and_named(redis, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    for i in range(3):
        registry.add(fake_checkpoint(tmp_path / f"ck{i}", 2.0 - i / 10))
    registry.set_live("v3")
    await redis.set(keys.LIVE_MODEL, "v3")
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.MODELS_CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation

    message = await model_admin.rollback(registry, redis, None)
    assert "v2" in message
    assert registry.live().version == "v2"
    assert (await redis.get(keys.LIVE_MODEL)) == b"v2"
    announced = await pubsub.get_message(timeout=2)
    assert announced and announced["data"] == b"v2"

    await model_admin.rollback(registry, redis, "v1")
    assert registry.live().version == "v1"
    with pytest.raises(ModelError, match="no earlier version"):
        await model_admin.rollback(registry, redis, None)
    with pytest.raises(ModelError, match="no model version"):
        await model_admin.rollback(registry, redis, "v9")
    await pubsub.aclose()


async def test_only_one_retrain_at_a_time(redis, tmp_path: Path) -> None:
    await redis.set(keys.TRAIN_LOCK, "1")
    with pytest.raises(model_admin.TrainingBusy):
        await model_admin.start_retrain(Settings(data_dir=tmp_path), redis)
