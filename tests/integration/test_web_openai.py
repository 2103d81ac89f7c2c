"""The OpenAI-compatible API, driven by the official ``openai`` client against a real server.

Auth from a non-loopback address is tested for real when this machine has a non-loopback
interface: the server binds to it and the client connects to it, so the server sees a
non-loopback peer. (Where there is none, that test skips; the unit tests cover
``authenticate`` with a fake peer address either way.)
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
from conftest_web import StreamingEngine, engine, make_settings, non_loopback_address, serve

from bot import keys
from bot.settings import RedisSettings, Settings

__all__ = ["engine"]

API_KEY = "sk-test-0123456789"


@pytest.fixture
def settings(tmp_path: Path, redis_settings: RedisSettings) -> Settings:
    return make_settings(tmp_path, redis_settings, max_message_chars=200)


@pytest.fixture
async def base_url(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[str]:
    await redis.set(keys.LIVE_MODEL, "v7")
    async with serve(settings, redis) as url:
        yield url


def client_for(base_url: str, api_key: str = "unused", **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, **kw)


# --- completions -----------------------------------------------------------------------------


async def test_completion_not_streamed(base_url: str, engine: StreamingEngine) -> None:
    engine.delay_s = 0.01
    async with client_for(base_url) as client:
        completion = await client.chat.completions.create(
            model="parley", messages=[{"role": "user", "content": "hello bot"}]
        )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.created > 0
    assert completion.model == "parley"
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: hello bot. Nice!"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == 7


async def test_completion_streamed(base_url: str, engine: StreamingEngine) -> None:
    engine.delay_s = 0.02
    async with client_for(base_url) as client:
        stream = await client.chat.completions.create(
            model="v7",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == "v7" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(contents) >= 2
    assert "".join(contents) == "You said: stream please. Nice!"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 5


async def test_finish_reason_length(base_url: str, engine: StreamingEngine) -> None:
    engine.delay_s, engine.finish_reason = 0.0, "length"
    async with client_for(base_url) as client:
        completion = await client.chat.completions.create(
            model="parley", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
    assert completion.choices[0].finish_reason == "length"


async def test_messages_and_options_map_onto_the_request(
    base_url: str, engine: StreamingEngine
) -> None:
    engine.delay_s = 0.0
    async with client_for(base_url) as client:
        await client.chat.completions.create(
            model="parley",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "how are you?"}]},
            ],
            temperature=0.5,
            top_p=0.9,
            max_tokens=42,
            stop=["\n", "END"],
            seed=3,
            user="alice",
        )
        await client.chat.completions.create(
            model="parley", messages=[{"role": "user", "content": "x"}], stop="STOP"
        )
    first, second = engine.chats()
    assert first.text == "how are you?"
    assert first.history is not None
    assert [(t.role, t.text) for t in first.history] == [
        ("system", "Be brief."),
        ("user", "hi"),
        ("bot", "hello"),
    ]
    assert first.sampling.temperature == 0.5 and first.sampling.top_p == 0.9
    assert first.sampling.max_new_tokens == 42 and first.sampling.seed == 3
    assert first.sampling.stop == ("\n", "END")
    assert first.conversation == "api:loopback:alice"
    assert first.platform == "api"
    assert second.conversation == "api:loopback:default"
    assert second.history == () and second.sampling.stop == ("STOP",)
    assert first.id != second.id


# --- models ----------------------------------------------------------------------------------


async def test_models_lists_live_version_and_alias(base_url: str) -> None:
    async with client_for(base_url) as client:
        models = await client.models.list()
        ids = [m.id for m in models.data]
        assert ids == ["v7", "parley"]
        assert (await client.models.retrieve("v7")).id == "v7"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-4")


async def test_unknown_model_is_404(base_url: str, engine: StreamingEngine) -> None:
    async with client_for(base_url) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert engine.requests == []


# --- auth ------------------------------------------------------------------------------------


async def test_api_keys_are_required_when_configured(
    tmp_path: Path,
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    engine: StreamingEngine,
) -> None:
    engine.delay_s = 0.0
    settings = make_settings(tmp_path, redis_settings, api_keys=["other-key", API_KEY])
    async with serve(settings, redis) as url:
        async with client_for(url, api_key=API_KEY) as client:
            completion = await client.chat.completions.create(
                model="parley", messages=[{"role": "user", "content": "hi"}]
            )
        assert completion.choices[0].message.content
        for wrong in ("sk-wrong", API_KEY + "x"):
            async with client_for(url, api_key=wrong) as client:
                with pytest.raises(openai.AuthenticationError) as caught:
                    await client.models.list()
            assert caught.value.status_code == 401
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/v1/models") as response,  # no Authorization at all
        ):
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "invalid_api_key"
    scope = hashlib.sha256(API_KEY.encode()).hexdigest()[:16]
    (chat,) = engine.chats()
    assert chat.conversation == f"api:{scope}:default"
    assert API_KEY not in chat.conversation


async def test_non_loopback_clients_need_a_key(
    tmp_path: Path, redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback interface to connect from")
    no_keys = make_settings(tmp_path, redis_settings)
    async with serve(no_keys, redis, host=address) as url, client_for(url) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.models.list()
        assert "only serves clients on this machine" in caught.value.message
    with_key = make_settings(tmp_path, redis_settings, api_keys=[API_KEY])
    async with serve(with_key, redis, host=address) as url:
        async with client_for(url, api_key=API_KEY) as client:
            assert "parley" in [m.id for m in (await client.models.list()).data]
        async with client_for(url, api_key="nope") as client:
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()


# --- bad input -------------------------------------------------------------------------------


async def post_raw(base_url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        return response.status, await response.json()


def assert_openai_error(body: dict[str, Any]) -> dict[str, Any]:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b'{"messages": [', 400, "invalid_json", None),
        (b"[]", 400, "invalid_type", None),
        (b'{"model": "parley"}', 400, "invalid_type", None),
        (b'{"messages": "hi"}', 400, "invalid_type", "messages"),
        (
            b'{"messages": [{"role": "user", "content": 5}]}',
            400,
            "invalid_type",
            "messages[0].content",
        ),
        (
            b'{"messages": [{"role": "robot", "content": "x"}]}',
            400,
            "invalid_type",
            "messages[0].role",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            400,
            "invalid_type",
            "temperature",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            400,
            "invalid_type",
            "temperature",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            400,
            "invalid_type",
            "max_tokens",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            400,
            "invalid_type",
            "stream",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "stop": [1]}',
            400,
            "invalid_type",
            "stop[0]",
        ),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', 400, "invalid_type", "n"),
        (b'{"messages": []}', 400, "invalid_value", "messages"),
        (
            b'{"messages": [{"role": "assistant", "content": "x"}]}',
            400,
            "invalid_value",
            "messages[0].role",
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
            400,
            "unsupported_content",
            "messages[0].content",
        ),
        (
            b'{"messages": [{"role": "user", "content": "' + b"x" * 201 + b'"}]}',
            400,
            "context_length_exceeded",
            "messages[0].content",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "model": "nope"}',
            404,
            "model_not_found",
            "model",
        ),
    ],
)
async def test_bad_requests_get_openai_shaped_4xx(
    base_url: str,
    engine: StreamingEngine,
    body: bytes,
    status: int,
    code: str,
    param: str | None,
) -> None:
    got_status, got = await post_raw(base_url, body)
    assert got_status == status
    error = assert_openai_error(got)
    assert error["code"] == code
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert engine.requests == []


async def test_ten_megabyte_body_is_413(base_url: str) -> None:
    status, body = await post_raw(base_url, b'{"messages": "' + b"x" * (10 * 2**20) + b'"}')
    assert status == 413
    assert assert_openai_error(body)["code"] == "request_too_large"


async def test_body_just_under_a_megabyte_is_read(base_url: str) -> None:
    status, body = await post_raw(base_url, b'{"messages": 1, "pad": "' + b"x" * 1_000_000 + b'"}')
    assert status == 400 and body["error"]["param"] == "messages"


async def test_wrong_method_and_unknown_path_are_openai_shaped(base_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/v1/chat/completions") as response:
            assert response.status == 405
            assert_openai_error(await response.json())
        async with session.post(f"{base_url}/v1/completions", json={}) as response:
            assert response.status == 404
            assert_openai_error(await response.json())


async def test_full_queue_is_503_busy(
    base_url: str, redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    shard = keys.shard_for("api:loopback:default", redis_settings.shards)
    for _ in range(redis_settings.max_stream_len):
        await redis.xadd(keys.request_stream(shard), {keys.FIELD: b"filler"})
    async with client_for(base_url) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(
                model="parley", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == 503
    assert caught.value.code == "busy"
