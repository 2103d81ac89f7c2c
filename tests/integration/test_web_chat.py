"""The chat page's endpoints through the real queue: streaming, limits, busy, reset, pages."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from conftest_web import ADAPTER_ID, StreamingEngine, engine, make_settings, reply_for

from adapters.web.app import create_app
from bot import keys
from bot.registry import ModelRegistry
from bot.settings import RedisSettings

__all__ = ["engine"]  # the fixture, imported so pytest finds it

CONVERSATION = "0123456789abcdef"


@pytest.fixture
async def client(
    tmp_path: Path, redis: aioredis.Redis, redis_settings: RedisSettings
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = make_settings(tmp_path, redis_settings, max_message_chars=50)
    app = create_app(
        settings, redis, adapter_id=ADAPTER_ID, registry=ModelRegistry(settings.models_dir)
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def read_events(response: ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """Parse a Server-Sent Events body as it arrives."""
    events = []
    buffer = ""
    async for chunk in response.content.iter_any():
        buffer += chunk.decode()
        while "\n\n" in buffer:
            frame, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in frame.splitlines())
            events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_chat_streams_deltas_then_done(
    client: TestClient[Any, Any], engine: StreamingEngine
) -> None:
    response = await client.post(
        "/api/chat", json={"conversation": CONVERSATION, "text": "  hello there "}
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = await read_events(response)

    names = [name for name, _ in events]
    assert names[-1] == "done" and names[:-1] == ["delta"] * (len(events) - 1)
    assert len(events) - 1 >= 2
    expected = reply_for("hello there")
    assert "".join(data["text"] for name, data in events if name == "delta") == expected
    assert events[-1][1]["text"] == expected
    assert events[-1][1]["finish_reason"] == "stop"

    (request,) = engine.chats()
    assert request.conversation == f"web:{CONVERSATION}:{CONVERSATION}"
    assert request.text == "hello there"
    assert request.platform == "web" and request.reply_to == ADAPTER_ID
    assert re.fullmatch(r"[0-9a-f]{32}", request.id)


async def test_request_ids_are_unique(
    client: TestClient[Any, Any], engine: StreamingEngine
) -> None:
    engine.delay_s = 0.0
    for text in ("one", "two", "three"):
        response = await client.post("/api/chat", json={"conversation": CONVERSATION, "text": text})
        await read_events(response)
    ids = [r.id for r in engine.chats()]
    assert len(ids) == 3 and len(set(ids)) == 3


async def test_too_long_message_is_a_clear_400(
    client: TestClient[Any, Any], engine: StreamingEngine
) -> None:
    response = await client.post("/api/chat", json={"conversation": CONVERSATION, "text": "x" * 51})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "message_too_long"
    assert "51" in error["message"] and "50" in error["message"]
    assert engine.requests == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b'{"conversation": "0123456789abcdef", "text": 5}', "invalid_type"),
        (b'{"conversation": "../../etc", "text": "hi"}', "invalid_type"),
        (b'{"conversation": "0123456789abcdef", "text": "   "}', "empty_message"),
    ],
)
async def test_bad_chat_bodies_get_400(
    client: TestClient[Any, Any], body: bytes, code: str
) -> None:
    response = await client.post(
        "/api/chat", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"]["code"] == code


async def test_full_queue_answers_busy_at_once(
    client: TestClient[Any, Any], redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    # No engine reads the stream; fill the conversation's shard up to its bound.
    shard = keys.shard_for(f"web:{CONVERSATION}:{CONVERSATION}", redis_settings.shards)
    for _ in range(redis_settings.max_stream_len):
        await redis.xadd(keys.request_stream(shard), {keys.FIELD: b"filler"})
    response = await client.post("/api/chat", json={"conversation": CONVERSATION, "text": "hi"})
    assert response.status == 503
    assert response.headers["Retry-After"]
    error = (await response.json())["error"]
    assert error["code"] == "busy" and "busy" in error["message"]


async def test_reset_sends_a_control_request(
    client: TestClient[Any, Any], engine: StreamingEngine
) -> None:
    response = await client.post("/api/reset", json={"conversation": CONVERSATION})
    assert response.status == 200
    assert await response.json() == {"ok": True}
    (control,) = engine.controls()
    assert control.command == "reset"
    assert control.conversation == f"web:{CONVERSATION}:{CONVERSATION}"


async def test_config_tells_the_length_limit(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/config")
    assert await response.json() == {"max_message_chars": 50}


@pytest.mark.parametrize("path", ["/", "/admin"])
async def test_pages_have_no_external_assets(client: TestClient[Any, Any], path: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    html = await response.text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", html)
    assert "<style>" in html and "<script>" in html


async def test_unknown_api_path_is_json_404(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/nope")
    assert response.status == 404
    assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_metrics_count_chat_requests(
    client: TestClient[Any, Any], engine: StreamingEngine
) -> None:
    engine.delay_s = 0.0
    response = await client.post("/api/chat", json={"conversation": CONVERSATION, "text": "hi"})
    await read_events(response)
    text = await (await client.get("/metrics")).text()
    assert re.search(
        r'parley_adapter_requests_total\{adapter="web-test",route="/api/chat",status="200"\} '
        r"[1-9]",
        text,
    )
    assert re.search(
        r'parley_adapter_request_seconds_count\{adapter="web-test",route="/api/chat"\} [1-9]', text
    )
    assert 'parley_adapter_requests_in_flight{adapter="web-test"}' in text
    assert re.search(
        r'parley_adapter_replies_total\{adapter="web-test",outcome="done"\} [1-9]', text
    )
