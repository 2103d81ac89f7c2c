"""A batch whose replies cannot be written: its conversations are released and its requests
answered after a reclaim, not held on the worker forever.

Redis refuses the worker's writes for real: the worker connects as its own ACL user, and
that user loses the right to XADD (as a write to a restarting or read-only Redis fails, the
whole MULTI/EXEC is refused and nothing of the batch is stored or acknowledged).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from bot.queue import ParleyClient
from bot.redis import connect
from bot.settings import EngineSettings, RedisSettings, Settings
from bot.wire import Done, Sampling
from engine.checkpoint import Checkpoint
from tests.integration.test_engine_roundtrip import running_engine
from tests.unit.engine_fixtures import tiny_checkpoint

GREEDY = Sampling(temperature=0.0, max_new_tokens=8)


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
async def worker_user(
    redis: aioredis.Redis, redis_url: str
) -> AsyncIterator[tuple[str, aioredis.Redis]]:
    """An ACL user of its own for the worker (name, and a client logged in as it)."""
    name, password = f"parley-test-worker-{os.getpid()}", "worker-secret"
    await redis.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all")
    client = await connect(as_user(redis_url, name, password))
    try:
        yield name, client
    finally:
        await client.aclose()
        await redis.execute_command("ACL", "DELUSER", name)


class WriteFailed(logging.Handler):
    """Sets ``happened`` when the worker logs that a write failed and left requests behind."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self.loop = loop
        self.happened = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        left = record.args[-1] if isinstance(record.args, tuple) and record.args else 0
        if record.getMessage().startswith("writing") and isinstance(left, int) and left > 0:
            self.loop.call_soon_threadsafe(self.happened.set)


async def test_a_failed_write_releases_the_conversation_for_reclaim(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    worker_user: tuple[str, aioredis.Redis],
    tmp_path: Path,
    make_chat,
) -> None:
    name, worker_redis = worker_user
    settings = Settings(
        data_dir=tmp_path,
        redis=redis_settings,
        engine=EngineSettings(read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2),
    )
    ckpt: Checkpoint = tiny_checkpoint(tmp_path / "tiny", "gru")
    failed = WriteFailed(asyncio.get_running_loop())
    worker_log = logging.getLogger("engine.serve.worker")
    worker_log.addHandler(failed)
    await redis.execute_command("ACL", "SETUSER", name, "-xadd")  # writes fail from now on
    try:
        async with (
            running_engine(worker_redis, settings, ckpt),
            ParleyClient(redis, settings.redis, "web-1") as client,
        ):
            first, second = (
                make_chat(text, reply_to="web-1", conversation="web:a:a", sampling=GREEDY)
                for text in ("hello", "and then?")
            )
            replies = [asyncio.create_task(client.reply(r, timeout_s=60)) for r in (first, second)]
            await asyncio.wait_for(failed.happened.wait(), 30)
            await redis.execute_command("ACL", "SETUSER", name, "+xadd")  # Redis is back
            answers = await asyncio.wait_for(asyncio.gather(*replies), 60)
    finally:
        worker_log.removeHandler(failed)
    assert [type(a) for a in answers] == [Done, Done]
    assert [a.request_id for a in answers] == [first.id, second.id]
