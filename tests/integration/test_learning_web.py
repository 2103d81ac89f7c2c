"""The web page's side of the learning loop over real HTTP: a reply's ``done`` event names its
request, 👍/👎 on it reach the archived exchange, and /api/forget runs /forget (engine and
archive) and says what it deleted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from conftest_web import StreamingEngine, engine, make_settings, serve

from bot import keys, wire
from bot.queue import cancel_and_wait
from bot.registry import ModelRegistry
from bot.settings import RedisSettings, Settings
from bot.trainer.service import TrainerService
from bot.wire import Exchange

__all__ = ["engine"]  # the fixture, imported so pytest finds it


@pytest.fixture
def settings(tmp_path: Path, redis_settings: RedisSettings) -> Settings:
    return make_settings(tmp_path, redis_settings)


@pytest.fixture
async def trainer(redis: aioredis.Redis, settings: Settings) -> AsyncIterator[TrainerService]:
    """The trainer's request loop; the test drains the log itself."""
    service = TrainerService(settings, redis, registry=ModelRegistry(settings.models_dir))
    await service.start()

    async def serve_requests() -> None:
        while True:
            await service.step(block_ms=50)

    task = asyncio.create_task(serve_requests())
    yield service
    await cancel_and_wait([task])
    await service.close()


async def chat(http: aiohttp.ClientSession, url: str, text: str) -> dict[str, object]:
    """The ``done`` event of one chat message."""
    async with http.post(f"{url}/api/chat", json={"conversation": "page-0001", "text": text}) as r:
        assert r.status == 200
        body = (await r.read()).decode()
    frames = [f for f in body.split("\n\n") if f.startswith("event: done")]
    done: dict[str, object] = json.loads(frames[0].split("data: ", 1)[1])
    return done


async def test_feedback_and_forget_from_the_web_page(
    redis: aioredis.Redis,
    settings: Settings,
    engine: StreamingEngine,
    trainer: TrainerService,
) -> None:
    async with serve(settings, redis) as url, aiohttp.ClientSession() as http:
        done = await chat(http, url, "hello")
        request_id = str(done["request_id"])
        # The stand-in engine does not log; log the exchange as an engine does.
        exchange = Exchange(
            request_id=request_id,
            conversation="web:page-0001:page-0001",
            platform="web",
            user="page-0001",
            prompt="hello",
            reply=str(done["text"]),
            model_version="starter",
            created_ms=1,
        )
        await redis.xadd(keys.LOG_STREAM, {keys.FIELD: wire.encode(exchange)})
        while await trainer.archiver.step(block_ms=50):
            pass

        feedback = {"conversation": "page-0001", "request_id": request_id, "value": 1}
        async with http.post(f"{url}/api/feedback", json=feedback) as r:
            assert r.status == 200
        bad = {"conversation": "page-0001", "request_id": request_id, "value": 7}
        async with http.post(f"{url}/api/feedback", json=bad) as r:
            assert r.status == 400

        async with http.post(f"{url}/api/forget", json={"conversation": "page-0001"}) as r:
            assert r.status == 200
            forgot = await r.json()
    assert forgot["ok"] is True
    # Forget came after the feedback on the trainer's stream: the reply it deleted was the
    # one marked good (the user's message and the reply).
    assert (
        "from the archive I deleted 1 archived message(s) of yours, 1 of my replies"
        in (forgot["message"])
    )
    assert [c.command for c in engine.controls()] == ["forget"]
    assert await trainer.archive.call(lambda a: a.total()) == 0
