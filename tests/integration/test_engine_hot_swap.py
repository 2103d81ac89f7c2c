"""A model swap under load, through a real Redis, ParleyClient and EngineWorker, loses nothing:
every request gets exactly one final ``Done``, from the model it started on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bot.queue import ParleyClient, RequestConsumer
from bot.settings import EngineSettings, RedisSettings, Settings
from bot.wire import ChatRequest, Delta, Done, ReplyEvent, Sampling
from engine.checkpoint import Checkpoint
from engine.serve.metrics import EngineMetrics
from engine.serve.scheduler import Scheduler
from engine.serve.worker import EngineWorker
from tests.unit.engine_fixtures import tiny_checkpoint

ADAPTER = "web-swap"


@contextlib.asynccontextmanager
async def serving(
    redis: aioredis.Redis, settings: Settings, ckpt: Checkpoint
) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(
        ckpt,
        settings.engine,
        settings.sampling,
        ckpt.model.device,
        metrics=EngineMetrics("swap", CollectorRegistry()),
    )
    consumer = RequestConsumer(redis, settings.redis, consumer="w-swap")
    worker = EngineWorker(settings, redis, consumer, scheduler, "w-swap")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield scheduler
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


@pytest.fixture
def settings(redis_settings: RedisSettings, tmp_path: Path) -> Settings:
    engine = EngineSettings(read_block_ms=10, stream_interval_ms=20, heartbeat_s=0.2, max_batch=8)
    return Settings(data_dir=tmp_path, redis=redis_settings, engine=engine)


@pytest.mark.parametrize("arch", ["gru", "gpt"])
async def test_hot_swap_under_load_loses_no_request(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path, arch: str
) -> None:
    v1 = tiny_checkpoint(tmp_path / "v1", arch, seed=0)
    v2 = tiny_checkpoint(tmp_path / "v2", arch, seed=1)
    sampling = Sampling(temperature=1.0, seed=5, max_new_tokens=24)
    requests = [
        ChatRequest(
            id=f"q{i}",
            conversation=f"web:c{i % 12}:c{i % 12}",
            reply_to=ADAPTER,
            text=f"message number {i}",
            sampling=sampling,
        )
        for i in range(48)  # 12 conversations with 4 messages each: held back, then released
    ]
    events: dict[str, list[ReplyEvent]] = {}

    async def chat(client: ParleyClient, request: ChatRequest) -> None:
        events[request.id] = [e async for e in client.stream(request, timeout_s=60)]

    async with (
        serving(redis, settings, v1) as scheduler,
        ParleyClient(redis, settings.redis, ADAPTER) as client,
    ):
        first = [asyncio.create_task(chat(client, r)) for r in requests[:24]]
        while scheduler.stats.running < 4:  # the batch is busy decoding
            await asyncio.sleep(0.005)
        scheduler.swap(v2)
        while scheduler.stats.model_version != "v2":
            await asyncio.sleep(0.005)
        late = [asyncio.create_task(chat(client, r)) for r in requests[24:]]
        await asyncio.gather(*first, *late)

    finals = {rid: evs[-1] for rid, evs in events.items()}
    assert sorted(finals) == sorted(r.id for r in requests)
    assert all(isinstance(f, Done) for f in finals.values()), finals
    for rid, evs in events.items():
        assert [e.seq for e in evs] == list(range(len(evs))), rid  # no gap, no duplicate
        assert all(isinstance(e, Delta) for e in evs[:-1])
    versions = {rid: f.model_version for rid, f in finals.items() if isinstance(f, Done)}
    assert set(versions.values()) == {"v1", "v2"}  # the swap happened mid-load
    assert all(versions[r.id] == "v2" for r in requests[24:])  # sent after it: the new model
