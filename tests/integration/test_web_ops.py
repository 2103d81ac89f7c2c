"""``/healthz``, ``/readyz`` and ``/metrics`` against the real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from conftest_web import ADAPTER_ID, make_settings, write_heartbeat

from adapters.web.app import create_app, run_web
from bot import keys
from bot.registry import ModelRegistry
from bot.settings import RedisSettings, Settings


@pytest.fixture
def settings(tmp_path: Path, redis_settings: RedisSettings) -> Settings:
    return make_settings(tmp_path, redis_settings)


@pytest.fixture
async def client(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(
        settings, redis, adapter_id=ADAPTER_ID, registry=ModelRegistry(settings.models_dir)
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def readyz(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    return response.status, await response.json()


async def test_healthz_is_always_200(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"alive": True}


async def test_readyz_503_without_a_heartbeat(client: TestClient[Any, Any]) -> None:
    status, body = await readyz(client)
    assert status == 503
    assert body["ready"] is False and body["failed"] == "engine"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["engine"] == "no engine heartbeat"


async def test_readyz_503_with_a_stale_heartbeat(
    client: TestClient[Any, Any], redis: aioredis.Redis
) -> None:
    await write_heartbeat(redis, age_s=30)
    status, body = await readyz(client)
    assert status == 503 and body["failed"] == "engine"
    assert "30 s old" in body["checks"]["engine"]


async def test_readyz_503_when_no_engine_has_a_model(
    client: TestClient[Any, Any], redis: aioredis.Redis
) -> None:
    await write_heartbeat(redis, model_version="")
    status, body = await readyz(client)
    assert status == 503 and body["failed"] == "model"


async def test_readyz_200_with_a_fresh_heartbeat(
    client: TestClient[Any, Any], redis: aioredis.Redis
) -> None:
    await write_heartbeat(redis, "old", age_s=60)
    await redis.hset(keys.ENGINES, "garbage", b"not json")
    await write_heartbeat(redis, "engine-1", model_version="v3", age_s=1)
    status, body = await readyz(client)
    assert status == 200
    assert body == {
        "ready": True,
        "failed": None,
        "checks": {"redis": "ok", "engine": "1 alive", "model": "loaded (v3)"},
    }


async def test_readyz_503_when_redis_is_down(settings: Settings, redis: aioredis.Redis) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    app = create_app(settings, dead, adapter_id=ADAPTER_ID, registry=ModelRegistry(Path("/nx")))
    app.cleanup_ctx.clear()  # the queue client could not start without Redis
    try:
        async with TestClient(TestServer(app)) as client:
            assert (await client.get("/healthz")).status == 200
            status, body = await readyz(client)
    finally:
        await dead.aclose()
    assert status == 503 and body["failed"] == "redis"
    assert body["checks"]["redis"] != "ok"


async def test_metrics_is_prometheus_text(client: TestClient[Any, Any]) -> None:
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert "# TYPE parley_adapter_requests_total counter" in text
    assert "# TYPE parley_adapter_request_seconds histogram" in text
    assert "# TYPE parley_adapter_requests_in_flight gauge" in text
    assert 'route="/healthz",status="200"' in text
    assert "process_cpu_seconds_total" in text or "python_info" in text  # the default registry


async def test_run_web_serves_until_cancelled(
    tmp_path: Path, redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(tmp_path, redis_settings, port=port)
    task = asyncio.create_task(run_web(settings, redis, adapter_id=ADAPTER_ID))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("run_web did not start serving")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with socket.socket() as s:  # nobody listens on the port any more: the runner cleaned up
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
