"""Who the web adapter thinks is calling, behind proxies, and the per-client rate limit.

A real server on a real port, the official ``openai`` client, a real Redis (the limits' windows
live there).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
from conftest_web import StreamingEngine, engine, make_settings, serve

from bot.settings import RedisSettings, SafetySettings

API_KEY = "sk-test-clients"
__all__ = ["engine"]  # the fixture, imported for pytest


def client_for(url: str, api_key: str = "unused", **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=api_key, max_retries=0, default_headers=headers or None
    )


async def test_a_request_forwarded_by_an_untrusted_peer_is_not_local(
    tmp_path: Path, redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    settings = make_settings(tmp_path, redis_settings)  # no keys: only local clients
    async with serve(settings, redis) as url:
        async with client_for(url) as client:
            assert "parley" in [m.id for m in (await client.models.list()).data]
        # A proxy on this machine forwarding an internet client: not local, needs a key.
        async with client_for(url, **{"X-Forwarded-For": "203.0.113.7"}) as client:
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()


async def test_a_trusted_proxy_names_the_client(
    tmp_path: Path, redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    settings = make_settings(tmp_path, redis_settings, trusted_proxies=["127.0.0.0/8"])
    async with serve(settings, redis) as url:
        async with client_for(url, **{"X-Forwarded-For": "203.0.113.7"}) as client:
            with pytest.raises(openai.AuthenticationError):  # the client is 203.0.113.7
                await client.models.list()
        # A spoofed "127.0.0.1" first hop does not help: the proxy appended the real one.
        spoofed = {"X-Forwarded-For": "127.0.0.1, 203.0.113.7"}
        async with client_for(url, **spoofed) as client:
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
        async with client_for(url, **{"X-Forwarded-For": "127.0.0.1"}) as client:
            assert "parley" in [m.id for m in (await client.models.list()).data]


async def test_chat_requests_are_rate_limited_per_client_with_retry_after(
    tmp_path: Path,
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    engine: StreamingEngine,
) -> None:
    settings = make_settings(
        tmp_path, redis_settings, api_keys=[API_KEY, "sk-other"], rate_limit="2/minute"
    )
    engine.deltas, engine.delay_s = 1, 0.0
    messages = [{"role": "user", "content": "hi"}]
    async with serve(settings, redis) as url:
        async with client_for(url, api_key=API_KEY) as client:
            for _ in range(2):
                await client.chat.completions.create(model="parley", messages=messages)  # type: ignore[arg-type]
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="parley", messages=messages)  # type: ignore[arg-type]
            assert caught.value.code == "rate_limit_exceeded"
            assert int(caught.value.response.headers["Retry-After"]) >= 1
        async with client_for(url, api_key="sk-other") as other:  # another client is not held up
            await other.chat.completions.create(model="parley", messages=messages)  # type: ignore[arg-type]
        # The chat page is limited per address the same way.
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(3):
                async with session.post(
                    f"{url}/api/chat", json={"conversation": "conv-12345678", "text": "hi"}
                ) as response:
                    statuses.append(response.status)
                    await response.read()
            assert statuses == [200, 200, 429]
    assert len(engine.chats()) == 5  # refused requests never reached the engine


async def test_a_streamed_reply_the_safety_filter_replaces_ends_in_an_error(
    tmp_path: Path,
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    engine: StreamingEngine,
) -> None:
    settings = make_settings(tmp_path, redis_settings).model_copy(
        update={"safety": SafetySettings(blocklist=["said"], action="replace")}
    )
    engine.delay_s = 0.0
    async with serve(settings, redis) as url, client_for(url) as client:
        stream = await client.chat.completions.create(
            model="parley", messages=[{"role": "user", "content": "hello there"}], stream=True
        )
        contents = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    contents.append(chunk.choices[0].delta.content)
    # The blocked word was never streamed, and the stream did not end as if it were whole.
    assert "said" not in "".join(contents)
    assert "changed after streaming began" in caught.value.message
    # Not streamed, the same reply is simply the replacement.
    async with serve(settings, redis) as url, client_for(url) as client:
        completion = await client.chat.completions.create(
            model="parley", messages=[{"role": "user", "content": "hello there"}]
        )
    assert completion.choices[0].message.content == SafetySettings().replacement
