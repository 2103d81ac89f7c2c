"""Conversation state through a real Redis: spilled with a TTL and the model version, restored
for a follow-up that equals a recompute, ignored when it is stale, never crossing
conversations under concurrent load."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bot import keys
from bot.queue import ParleyClient, RequestConsumer
from bot.settings import EngineSettings, RedisSettings, Settings
from bot.wire import ChatRequest, Done, Sampling
from engine.checkpoint import Checkpoint
from engine.serve.cache import CacheEntry, deserialize_entry, serialize_entry
from engine.serve.metrics import EngineMetrics
from engine.serve.scheduler import Scheduler
from engine.serve.worker import EngineWorker
from tests.unit.engine_fixtures import tiny_checkpoint

ADAPTER = "web-state"
GREEDY = Sampling(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12)


@contextlib.asynccontextmanager
async def serving(
    redis: aioredis.Redis, settings: Settings, ckpt: Checkpoint
) -> AsyncIterator[tuple[Scheduler, ParleyClient]]:
    scheduler = Scheduler(
        ckpt,
        settings.engine,
        settings.sampling,
        ckpt.model.device,
        metrics=EngineMetrics("state", CollectorRegistry()),
    )
    consumer = RequestConsumer(redis, settings.redis, consumer="w-state")
    worker = EngineWorker(settings, redis, consumer, scheduler, "w-state")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        async with ParleyClient(redis, settings.redis, ADAPTER) as client:
            yield scheduler, client
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def settings_for(redis_settings: RedisSettings, tmp_path: Path, **engine: object) -> Settings:
    base = {"read_block_ms": 10, "stream_interval_ms": 0, "heartbeat_s": 0.2, **engine}
    return Settings(data_dir=tmp_path, redis=redis_settings, engine=EngineSettings(**base))


@pytest.fixture(params=["gru", "gpt"])
def ckpt(request: pytest.FixtureRequest, tmp_path: Path) -> Checkpoint:
    return tiny_checkpoint(tmp_path / request.param, request.param)


def chat(conversation: str, text: str, n: int) -> ChatRequest:
    return ChatRequest(
        id=f"{conversation}-{n}",
        conversation=conversation,
        reply_to=ADAPTER,
        text=text,
        sampling=GREEDY,
    )


async def say(client: ParleyClient, conversation: str, text: str, n: int) -> str:
    final = await client.reply(chat(conversation, text, n), timeout_s=30)
    assert isinstance(final, Done), final
    return final.text


async def test_spilled_state_round_trips_through_redis_and_matches_a_recompute(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path, ckpt: Checkpoint
) -> None:
    settings = settings_for(redis_settings, tmp_path, cache_bytes=0, state_ttl_s=600)
    async with serving(redis, settings, ckpt) as (scheduler, client):
        # Two conversations say the same things; every finished state is spilled at once.
        for conv in ("web:a:a", "web:b:b"):
            await say(client, conv, "hello there", 0)
        blob = await redis.get(keys.state("web:a:a"))
        assert blob is not None
        assert 0 < await redis.ttl(keys.state("web:a:a")) <= 600
        entry = deserialize_entry(blob, ckpt.model.state_from_tensors)
        assert entry is not None and entry.version == ckpt.version
        assert entry.text.startswith("<|user|>hello there<|eot|><|bot|>")
        # b loses its spilled state: its follow-up recomputes from the stored history.
        await redis.delete(keys.state("web:b:b"))
        hits = scheduler.stats.cache_hits
        restored = await say(client, "web:a:a", "and what about you?", 1)
        assert scheduler.stats.cache_hits == hits + 1
        recomputed = await say(client, "web:b:b", "and what about you?", 1)
        assert scheduler.stats.cache_hits == hits + 1
    assert restored == recomputed


async def test_state_from_another_model_version_is_ignored(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path, ckpt: Checkpoint
) -> None:
    settings = settings_for(redis_settings, tmp_path, cache_bytes=0)
    async with serving(redis, settings, ckpt) as (scheduler, client):
        for conv in ("web:a:a", "web:b:b"):
            await say(client, conv, "hello there", 0)
        entry = deserialize_entry(
            await redis.get(keys.state("web:a:a")), ckpt.model.state_from_tensors
        )
        assert entry is not None
        stale = CacheEntry("some-older-version", entry.text, entry.state)
        await redis.set(keys.state("web:a:a"), serialize_entry(stale))
        await redis.delete(keys.state("web:b:b"))
        hits = scheduler.stats.cache_hits
        a = await say(client, "web:a:a", "and you?", 1)
        b = await say(client, "web:b:b", "and you?", 1)
        assert scheduler.stats.cache_hits == hits
    assert a == b


async def test_concurrent_conversations_get_their_solo_replies(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path, ckpt: Checkpoint
) -> None:
    """Randomised: many conversations at once (a small batch, a small cache that spills) give
    each conversation exactly the replies it gets alone."""
    rng = random.Random(3)
    words = ["hi", "hello there", "what did you do this weekend?", "你好", "music?", "ok"]
    script = {f"web:c{i}:c{i}": [rng.choice(words) for _ in range(3)] for i in range(10)}
    settings = settings_for(redis_settings, tmp_path, max_batch=4, cache_bytes=4096)

    async def converse(client: ParleyClient, conv: str, lines: list[str]) -> list[str]:
        out = []
        for n, line in enumerate(lines):
            await asyncio.sleep(rng.random() * 0.02)
            out.append(await say(client, conv, line, n))
        return out

    async with serving(redis, settings, ckpt) as (_, client):
        together = await asyncio.gather(*(converse(client, c, ls) for c, ls in script.items()))
    solo_settings = settings_for(redis_settings, tmp_path)
    async with serving(redis, solo_settings, ckpt) as (_, client):
        for (conv, lines), got in zip(script.items(), together, strict=True):
            assert await converse(client, conv.replace("web:", "solo:"), lines) == got, conv
