"""Helpers shared by the queue tests (test_queue_*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from bot import keys
from bot.queue import ParleyClient
from bot.settings import RedisSettings
from bot.wire import ChatRequest, ReplyEvent

MakeChat = Callable[..., ChatRequest]
EchoEngine = Any  # tests/integration/conftest.py; reached through the echo_engine_cls fixture

POLL_S = 0.01


async def collect(
    client: ParleyClient, request: ChatRequest, timeout_s: float = 5.0
) -> list[ReplyEvent]:
    return [e async for e in client.stream(request, timeout_s=timeout_s)]


async def backlog(redis: aioredis.Redis, settings: RedisSettings) -> int:
    return sum([await redis.xlen(keys.request_stream(s)) for s in range(settings.shards)])


async def wait_until(predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Until ``predicate()`` holds (checked every 10 ms), or fail after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(POLL_S)


async def idle_for(
    redis: aioredis.Redis, shard: int, entry_id: str, idle_ms: int, timeout_s: float = 5.0
) -> None:
    """Until Redis itself reports pending entry ``entry_id`` of ``shard`` idle for at least
    ``idle_ms`` (the condition a claim tests), or fail after ``timeout_s``."""
    stream = keys.request_stream(shard)
    async with asyncio.timeout(timeout_s):
        while True:
            rows = await redis.xpending_range(stream, keys.ENGINE_GROUP, entry_id, entry_id, 1)
            if rows and int(rows[0]["time_since_delivered"]) >= idle_ms:
                return
            await asyncio.sleep(POLL_S)
