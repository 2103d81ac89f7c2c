"""A message's whole path through a real Redis and a real engine worker (tiny CPU model)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot import keys
from bot.queue import ParleyClient, RequestConsumer
from bot.settings import EngineSettings, RedisSettings, Settings
from bot.wire import ControlRequest, Delta, Done, Error, Sampling
from engine.checkpoint import Checkpoint
from engine.serve.replies import ReplyPicker
from engine.serve.scheduler import Scheduler
from engine.serve.worker import EngineWorker
from tests.unit.engine_fixtures import tiny_checkpoint

GREEDY = Sampling(temperature=0.0, max_new_tokens=16)


@contextlib.asynccontextmanager
async def running_engine(
    redis: aioredis.Redis,
    settings: Settings,
    ckpt: Checkpoint,
    worker_id: str = "w1",
    *,
    replies: ReplyPicker | None = None,
) -> AsyncIterator[Scheduler]:
    """A real engine worker serving ``ckpt`` (in ``replies``' reply mode, if given) until the
    block ends."""
    scheduler = Scheduler(
        ckpt, settings.engine, settings.sampling, ckpt.model.device, replies=replies
    )
    consumer = RequestConsumer(redis, settings.redis, consumer=worker_id)
    worker = EngineWorker(settings, redis, consumer, scheduler, worker_id)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield scheduler
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
def settings(redis_settings: RedisSettings, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        redis=redis_settings,
        engine=EngineSettings(read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2),
    )


@pytest.fixture
def ckpt(tmp_path: Path) -> Checkpoint:
    return tiny_checkpoint(tmp_path / "tiny", "gru")


async def test_round_trip_streams_and_logs(redis, settings, ckpt, make_chat) -> None:
    async with (
        running_engine(redis, settings, ckpt),
        ParleyClient(redis, settings.redis, "web-1") as client,
    ):
        request = make_chat(
            "hello there",
            reply_to="web-1",
            sampling=Sampling(temperature=1.0, seed=1, max_new_tokens=16),
        )
        events = [e async for e in client.stream(request, timeout_s=20)]
    assert isinstance(events[-1], Done), events[-1]
    deltas = "".join(e.text for e in events if isinstance(e, Delta))
    done = events[-1]
    assert done.completion_tokens > 0 and done.model_version == "tiny"
    assert done.text.startswith(deltas)  # a stream only ever shows the final reply's start
    # acknowledged, logged, remembered
    shard = keys.shard_for(request.conversation, settings.redis.shards)
    pending = await redis.xpending(keys.request_stream(shard), keys.ENGINE_GROUP)
    assert pending["pending"] == 0
    assert await redis.xlen(keys.LOG_STREAM) == 1
    assert await redis.llen(keys.history(request.conversation)) == 2


async def test_followup_uses_history_and_reset_clears_it(redis, settings, ckpt, make_chat) -> None:
    async with (
        running_engine(redis, settings, ckpt) as scheduler,
        ParleyClient(redis, settings.redis, "web-1") as client,
    ):
        first = make_chat("hello", reply_to="web-1", conversation="web:a:a", sampling=GREEDY)
        await client.reply(first, timeout_s=20)
        second = make_chat("and you?", reply_to="web-1", conversation="web:a:a", sampling=GREEDY)
        assert isinstance(await client.reply(second, timeout_s=20), Done)
        assert await redis.llen(keys.history("web:a:a")) == 4
        reset = ControlRequest(
            id="reset-1", conversation="web:a:a", reply_to="web-1", command="reset"
        )
        done = await client.reply(reset, timeout_s=20)
        assert isinstance(done, Done) and "reset" in done.text.lower()
        assert await redis.exists(keys.history("web:a:a")) == 0
        assert scheduler.stats.cache_queries >= 2


async def test_one_conversation_burst_is_answered_in_order(
    redis, settings, ckpt, make_chat
) -> None:
    async with (
        running_engine(redis, settings, ckpt),
        ParleyClient(redis, settings.redis, "web-1") as client,
    ):
        burst = [
            make_chat(f"message {i}", reply_to="web-1", conversation="web:b:b", sampling=GREEDY)
            for i in range(5)
        ]
        replies = await asyncio.gather(*(client.reply(r, timeout_s=30) for r in burst))
    assert all(isinstance(r, Done) for r in replies)
    assert await redis.llen(keys.history("web:b:b")) == 10


async def test_malformed_entry_is_dead_lettered_and_worker_keeps_serving(
    redis, settings, ckpt, make_chat
) -> None:
    async with (
        running_engine(redis, settings, ckpt),
        ParleyClient(redis, settings.redis, "web-1") as client,
    ):
        await redis.xadd(keys.request_stream(0), {keys.FIELD: b"\x92not a request"})
        reply = await client.reply(
            make_chat("hello", reply_to="web-1", sampling=GREEDY), timeout_s=20
        )
    assert isinstance(reply, Done)
    assert await redis.xlen(keys.dead_letter_stream(0)) == 1


async def test_busy_past_waiting_limit(redis, settings, ckpt, make_chat) -> None:
    tight = settings.model_copy(
        update={"engine": settings.engine.model_copy(update={"max_batch": 1, "max_waiting": 1})}
    )
    async with (
        running_engine(redis, tight, ckpt),
        ParleyClient(redis, tight.redis, "web-1") as client,
    ):
        many = [
            make_chat(
                f"m{i}", reply_to="web-1", sampling=Sampling(temperature=0.0, max_new_tokens=200)
            )
            for i in range(8)
        ]
        replies = await asyncio.gather(*(client.reply(r, timeout_s=60) for r in many))
    codes = [r.code for r in replies if isinstance(r, Error)]
    assert codes and set(codes) == {"busy"}
    assert any(isinstance(r, Done) for r in replies)
