"""The model registry at an fsspec URL (``memory://``), read by a second "host": another
registry object over the same URL with its own local cache directory.

A version published by the trainer on one host is loaded by an engine on another (copied into
its cache, checked against the manifest); a version whose manifest is missing is half-written
and not listed; a corrupted file is refused and the live model keeps serving; rollback moves
the ``LIVE`` object through the URL.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import redis.asyncio as aioredis

from bot import keys, model_admin
from bot.errors import ConfigError, ModelError
from bot.queue import ParleyClient
from bot.registry import MANIFEST_FILE, ModelRegistry, ModelVersion, follow_live
from bot.settings import EngineSettings, RedisSettings, SamplingSettings, Settings
from bot.wire import ChatRequest, Done
from engine.service import serve
from tests.unit.engine_fixtures import tiny_checkpoint


def fake_checkpoint(path: Path, val_loss: float) -> Path:
    """The files a checkpoint has, with placeholder contents (the registry reads no weights)."""
    path.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        (path / name).write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights" * 100)
    (path / "metrics.json").write_text(json.dumps({"val_loss": val_loss}))
    (path / "loss.png").write_bytes(b"\x89PNG plot")
    return path


@pytest.fixture
def url() -> Iterator[str]:
    """A registry location of its own in the process-wide memory filesystem."""
    location = f"memory://parley-{uuid.uuid4().hex}/models"
    yield location
    fs = fsspec.filesystem("memory")
    root = location.removeprefix("memory://").split("/")[0]
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


def host(url: str, tmp_path: Path, name: str) -> ModelRegistry:
    return ModelRegistry(url, cache_dir=tmp_path / name / "model-cache", starter=False)


def store_path(url: str, *parts: str) -> str:
    """The memory filesystem's path of ``parts`` under the registry at ``url``."""
    return "/".join(["/" + url.removeprefix("memory://"), *parts])


async def test_a_version_published_on_one_host_is_loaded_on_another(
    url: str, tmp_path: Path
) -> None:
    trainer, engine = host(url, tmp_path, "trainer"), host(url, tmp_path, "engine")
    source = fake_checkpoint(tmp_path / "ckpt", 2.0)
    added = trainer.add(source, {"archive": {"messages": 7}})
    trainer.set_live(added.version)

    assert engine.live() is not None and engine.live().version == "v0001"  # type: ignore[union-attr]
    listed = engine.published()[0]
    assert (listed.validation_loss, listed.provenance) == (2.0, {"archive": {"messages": 7}})
    assert listed.loss_plot is not None and listed.loss_plot.read_bytes() == b"\x89PNG plot"
    got = engine.get("v0001")
    assert got.path == tmp_path / "engine" / "model-cache" / "v0001"
    for name in ("config.json", "tokenizer.json", "model.safetensors", "metrics.json"):
        assert (got.path / name).read_bytes() == (source / name).read_bytes()
    assert (got.path / MANIFEST_FILE).is_file()
    assert [p.name for p in got.path.parent.iterdir() if p.name.startswith(".incoming")] == []


async def test_a_version_without_its_manifest_is_half_written_and_not_listed(
    url: str, tmp_path: Path
) -> None:
    trainer, engine = host(url, tmp_path, "trainer"), host(url, tmp_path, "engine")
    trainer.set_live(trainer.add(fake_checkpoint(tmp_path / "a", 2.0)).version)
    fs = fsspec.filesystem("memory")
    source = fake_checkpoint(tmp_path / "b", 1.0)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):  # no manifest yet
        fs.put_file(str(source / name), store_path(url, "v0002", name))

    assert [v.version for v in engine.versions()] == ["v0001"]
    with pytest.raises(ModelError, match="no model version 'v0002'"):
        engine.get("v0002")
    with pytest.raises(ModelError, match="no model version 'v0002'"):
        engine.set_live("v0002")
    assert engine.live().version == "v0001"  # type: ignore[union-attr]
    # The next publish writes over the leftover, manifest last.
    again = trainer.add(fake_checkpoint(tmp_path / "c", 1.5))
    assert again.version == "v0002" and again.validation_loss == 1.5
    assert engine.get("v0002").validation_loss == 1.5


async def test_a_corrupted_file_is_refused_and_no_copy_is_kept(url: str, tmp_path: Path) -> None:
    trainer, engine = host(url, tmp_path, "trainer"), host(url, tmp_path, "engine")
    trainer.set_live(trainer.add(fake_checkpoint(tmp_path / "a", 2.0)).version)
    trainer.add(fake_checkpoint(tmp_path / "b", 1.0))
    fs = fsspec.filesystem("memory")
    fs.pipe_file(store_path(url, "v0002", "model.safetensors"), b"weights" * 99 + b"WEIGHTS")

    with pytest.raises(ModelError, match=r"v0002 .*does not match its checksum"):
        engine.get("v0002")
    with pytest.raises(ModelError, match="does not match its checksum"):
        engine.set_live("v0002")
    assert not (tmp_path / "engine" / "model-cache" / "v0002").exists()
    assert engine.live().version == "v0001"  # type: ignore[union-attr]
    # A cached copy damaged on this host is copied again from the store.
    cached = engine.get("v0001").path / "model.safetensors"
    cached.write_bytes(b"damaged on the engine host")
    assert (engine.get("v0001").path / "model.safetensors").read_bytes() == b"weights" * 100


async def test_rollback_through_the_url(url: str, tmp_path: Path, redis: aioredis.Redis) -> None:
    trainer, adapter = host(url, tmp_path, "trainer"), host(url, tmp_path, "adapter")
    for i in range(2):
        trainer.set_live(trainer.add(fake_checkpoint(tmp_path / f"ck{i}", 2.0 - i)).version)
    await trainer.announce(redis, "v0002")

    message = await model_admin.rollback(adapter, redis, None)
    assert "v0001" in message
    assert fsspec.filesystem("memory").cat_file(store_path(url, "LIVE")) == b"v0001\n"
    assert trainer.live().version == "v0001"  # type: ignore[union-attr]
    assert (await redis.get(keys.LIVE_MODEL)) == b"v0001"
    with pytest.raises(ModelError, match="no earlier version"):
        await model_admin.rollback(adapter, redis, None)


async def test_follow_live_catches_up_skips_the_served_and_refuses_the_damaged(
    url: str, tmp_path: Path, redis: aioredis.Redis
) -> None:
    trainer, engine = host(url, tmp_path, "trainer"), host(url, tmp_path, "engine")
    for i in range(3):
        trainer.add(fake_checkpoint(tmp_path / f"ck{i}", 2.0 - i / 10))
    fsspec.filesystem("memory").pipe_file(store_path(url, "v0003", "config.json"), b"{ }")
    swapped: asyncio.Queue[ModelVersion] = asyncio.Queue()

    async def swap_to(version: ModelVersion) -> None:
        await swapped.put(version)

    await trainer.announce(redis, "v0002")  # while the engine was loading v0001
    following = asyncio.create_task(follow_live(engine, redis, swap_to, serving="v0001"))
    try:
        caught_up = await asyncio.wait_for(swapped.get(), 30)  # it is subscribed by now
        assert caught_up.version == "v0002"
        assert caught_up.path == tmp_path / "engine" / "model-cache" / "v0002"
        for version in ("v0002", "v0003", "v0001"):  # served already; damaged; a rollback
            await trainer.announce(redis, version)
        assert (await asyncio.wait_for(swapped.get(), 30)).version == "v0001"
        assert swapped.empty()
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


def test_a_url_needs_a_cache_and_a_known_scheme(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a local cache_dir"):
        ModelRegistry("memory://x/models")
    with pytest.raises(ConfigError, match="nope"):
        ModelRegistry("nope://x/models", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown storage scheme 'nope'"):
        Settings(models_url="nope://bucket/models")
    settings = Settings(data_dir=tmp_path, models_url="memory://x/models")
    registry = ModelRegistry.from_settings(settings)
    assert (registry.location, registry.models_dir) == (
        "memory://x/models",
        tmp_path / "model-cache",
    )
    local = ModelRegistry.from_settings(Settings(data_dir=tmp_path))
    assert not local.remote and local.models_dir == tmp_path / "models"


async def test_an_engine_elsewhere_serves_what_the_trainer_publishes(
    url: str, tmp_path: Path, redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    """parley engine on host B with ``models_url``: starts on the live version, swaps to a new
    one, refuses a corrupted one while serving on, and follows a rollback."""
    trainer = host(url, tmp_path, "trainer")
    checkpoints = [tiny_checkpoint(tmp_path / f"ck{i}", "gru", seed=i).path for i in range(3)]
    trainer.set_live(trainer.add(checkpoints[0]).version)
    settings = Settings(
        data_dir=tmp_path / "engine-host",
        models_url=url,
        redis=redis_settings,
        engine=EngineSettings(
            read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2, dtype="float32"
        ),
        sampling=SamplingSettings(max_new_tokens=4),
    )
    cache = settings.models_cache_dir
    stop, ready = asyncio.Event(), asyncio.Event()
    engine = asyncio.create_task(serve(settings, redis, stop, ready=ready))
    served: list[str] = []
    try:
        await asyncio.wait_for(ready.wait(), 60)
        async with ParleyClient(redis, settings.redis, "url-host") as client:

            async def ask() -> str:
                n = len(served)
                request = ChatRequest(
                    id=f"u-{n}", conversation=f"web:c{n}:c{n}", reply_to="url-host", text="hi"
                )
                reply = await client.reply(request, timeout_s=60)
                assert isinstance(reply, Done), reply
                served.append(reply.model_version)
                return reply.model_version

            async def until(version: str) -> None:
                for _ in range(400):
                    if await ask() == version:
                        return
                raise AssertionError(f"{version} never served: {served[-5:]}")

            assert await ask() == "v0001"
            assert (cache / "v0001" / MANIFEST_FILE).is_file()  # loaded through its cache

            trainer.set_live(trainer.add(checkpoints[1]).version)
            await trainer.announce(redis, "v0002")
            await until("v0002")

            damaged = trainer.add(checkpoints[2])  # v0003, then damaged in the store
            weights = fsspec.filesystem("memory").cat_file(
                store_path(url, damaged.version, "model.safetensors")
            )
            fsspec.filesystem("memory").pipe_file(
                store_path(url, damaged.version, "model.safetensors"), weights[::-1]
            )
            await trainer.announce(redis, damaged.version)
            await model_admin.rollback(trainer, redis, "v0001")  # announced after v0003
            await until("v0001")
    finally:
        stop.set()
        await asyncio.wait_for(engine, 60)
    assert "v0003" not in served  # refused: v0002 served until the rollback
    assert not (cache / "v0003").exists()
    assert served[-1] == "v0001" and "v0002" in served  # back to v0001 after v0002


async def test_the_cache_keeps_the_newest_copies_only(url: str, tmp_path: Path) -> None:
    trainer, engine = host(url, tmp_path, "trainer"), host(url, tmp_path, "engine")
    for i in range(5):
        trainer.add(fake_checkpoint(tmp_path / f"ckpt{i}", 2.0 - i / 10))
    cache = tmp_path / "engine" / "model-cache"

    def cached() -> list[str]:
        return sorted(p.name for p in cache.iterdir() if p.name.startswith("v"))

    for version in ("v0001", "v0002", "v0003", "v0004"):
        engine.get(version)
    assert cached() == ["v0002", "v0003", "v0004"]
    engine.get("v0001")  # a rollback: copied again, and kept however old
    assert cached() == ["v0001", "v0003", "v0004"]
    assert engine.get("v0001").path.is_dir()
