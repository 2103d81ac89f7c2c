"""Connections: clear errors for a wrong URL, the embedded server, and a Redis restart."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from bot.embedded import EmbeddedRedis
from bot.errors import QueueError
from bot.queue import (
    ParleyClient,
)
from bot.redis import connect, ping
from bot.settings import RedisSettings
from bot.wire import Done
from tests.integration.queue_support import (
    EchoEngine,
    MakeChat,
    wait_until,
)


async def test_connect_to_nothing_says_what_to_fix() -> None:
    with pytest.raises(QueueError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1"):
        await connect("redis://127.0.0.1:1/0", connect_timeout_s=1)


async def test_connect_hides_the_password() -> None:
    with pytest.raises(QueueError) as info:
        await connect("redis://user:hunter2@127.0.0.1:1/0", connect_timeout_s=1)
    assert "hunter2" not in str(info.value)


async def test_embedded_server_starts_and_serves(
    tmp_path: Path,
    redis_settings: RedisSettings,
    make_chat: MakeChat,
    echo_engine_cls: type[EchoEngine],
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    async with server as url:
        assert server.running and url.startswith("redis://127.0.0.1:")
        client = await connect(url)
        try:
            assert await ping(client) > 0
            async with (
                echo_engine_cls(client, redis_settings),
                ParleyClient(client, redis_settings, "test") as parley,
            ):
                final = await parley.reply(make_chat("embedded"), timeout_s=5)
            assert isinstance(final, Done) and final.text == "echo: embedded"
        finally:
            await client.aclose()
    assert not server.running
    with pytest.raises(QueueError):
        await connect(url, connect_timeout_s=1)


async def test_client_and_engine_survive_a_redis_restart(
    tmp_path: Path,
    redis_settings: RedisSettings,
    make_chat: MakeChat,
    echo_engine_cls: type[EchoEngine],
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = await server.astart()
    server.port = int(url.rsplit(":", 1)[1])  # come back on the same port
    client = await connect(url)
    try:
        async with (
            echo_engine_cls(client, redis_settings),
            ParleyClient(client, redis_settings, "test") as parley,
        ):
            assert isinstance(await parley.reply(make_chat("before"), timeout_s=5), Done)
            await server.astop()  # everything in it is gone: streams, groups, scripts
            await wait_until(lambda: not parley.healthy)
            await server.astart()
            async with asyncio.timeout(10):
                while True:  # the first tries may meet the reconnecting client
                    with contextlib.suppress(QueueError):
                        final = await parley.reply(make_chat("after"), timeout_s=1)
                        if isinstance(final, Done):
                            break
            assert final.text == "echo: after"
            assert parley.healthy
    finally:
        await client.aclose()
        await server.astop()
