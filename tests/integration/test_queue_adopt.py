"""A queue client adopting requests an earlier client (a process that is gone) submitted:
``adopt`` yields their events without submitting them again, and ``start(from_id=...)`` reads
the events written before it started; against a real Redis and a real consumer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot import keys, wire
from bot.errors import QueueError
from bot.queue import ParleyClient
from bot.queue._replies import stream_entries
from bot.settings import RedisSettings
from bot.wire import ChatRequest, Delta, Done, Error, ReplyEvent

MakeChat = Callable[..., ChatRequest]
EchoEngineCls = Any  # tests/integration/conftest.py's EchoEngine, through its fixture

ADAPTER = "adopt-test"


async def submitted_by_a_client_that_is_gone(
    redis: aioredis.Redis, settings: RedisSettings, *requests: ChatRequest
) -> str:
    """Submit ``requests`` with a client of adapter ``ADAPTER`` that then closes; returns its
    position from before the submits."""
    async with ParleyClient(redis, settings, ADAPTER) as gone:
        position = gone.position
        for request in requests:
            await gone.submit(request)
    return position


async def answered(redis: aioredis.Redis, after: str, finals: int) -> None:
    """Until the reply stream holds ``finals`` final events after ``after`` (blocking reads)."""
    key, seen = keys.reply_stream(ADAPTER), 0
    while seen < finals:
        response = await redis.xread({key: after}, count=100, block=10_000)
        assert response, "no reply event in 10 s"
        for _key, entries in stream_entries(response):
            for entry_id, fields in entries:
                events = wire.decode_events(fields[keys.EVENTS_FIELD.encode()])
                seen += sum(wire.is_final(event) for event in events)
                after = entry_id


async def collect(events: Any) -> list[ReplyEvent]:
    return [event async for event in events]


async def test_adopts_events_written_before_it_started(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    echo_engine_cls: EchoEngineCls,
    make_chat: MakeChat,
) -> None:
    mine = make_chat("are you there?", reply_to=ADAPTER)
    other = make_chat("not adopted", reply_to=ADAPTER)
    position = await submitted_by_a_client_that_is_gone(redis, redis_settings, mine, other)
    async with echo_engine_cls(redis, redis_settings) as engine:
        await answered(redis, position, finals=2)
    assert len(engine.served) == 2

    client = ParleyClient(redis, redis_settings, ADAPTER)
    events = client.adopt(mine.id, timeout_s=5.0)
    await client.start(from_id=position)
    try:
        got = await collect(events)
        assert client.in_flight == 0
    finally:
        await client.close()
    assert [type(e) for e in got] == [Delta, Done]
    assert [e.request_id for e in got] == [mine.id, mine.id]
    assert isinstance(got[-1], Done) and got[-1].text == "echo: are you there?"
    backlog = [await redis.xlen(keys.request_stream(s)) for s in range(redis_settings.shards)]
    assert backlog == [0] * redis_settings.shards  # nothing was submitted again


async def test_adopts_events_written_after_it_started(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    echo_engine_cls: EchoEngineCls,
    make_chat: MakeChat,
) -> None:
    request = make_chat("later", reply_to=ADAPTER)
    position = await submitted_by_a_client_that_is_gone(redis, redis_settings, request)
    client = ParleyClient(redis, redis_settings, ADAPTER)
    events = client.adopt(request.id, timeout_s=5.0)
    await client.start(from_id=position)
    try:
        async with echo_engine_cls(redis, redis_settings) as engine:
            got = await collect(events)
    finally:
        await client.close()
    assert [type(e) for e in got] == [Delta, Done]
    assert got[-1].text == "echo: later"  # type: ignore[union-attr]
    assert [d.request.id for d in engine.served] == [request.id]  # answered once


async def test_started_at_the_end_it_misses_what_came_before(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    echo_engine_cls: EchoEngineCls,
    make_chat: MakeChat,
) -> None:
    request = make_chat("too early", reply_to=ADAPTER)
    position = await submitted_by_a_client_that_is_gone(redis, redis_settings, request)
    async with echo_engine_cls(redis, redis_settings):
        await answered(redis, position, finals=1)
    client = ParleyClient(redis, redis_settings, ADAPTER)
    events = client.adopt(request.id, timeout_s=0.5)
    await client.start()  # from the stream's end: the events are behind it
    try:
        got = await collect(events)
    finally:
        await client.close()
    assert [type(e) for e in got] == [Error]
    assert got[0].code == "unavailable"  # type: ignore[union-attr]


async def test_position_follows_the_reader(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    echo_engine_cls: EchoEngineCls,
    make_chat: MakeChat,
) -> None:
    async with (
        echo_engine_cls(redis, redis_settings),
        ParleyClient(redis, redis_settings, ADAPTER) as client,
    ):
        assert client.position == "0-0"  # an empty stream
        await client.reply(make_chat("one", reply_to=ADAPTER), timeout_s=5.0)
        [(last_id, _fields)] = await redis.xrevrange(keys.reply_stream(ADAPTER), count=1)
        assert client.position == last_id.decode()


async def test_adopting_a_request_in_flight_is_refused(
    redis: aioredis.Redis, redis_settings: RedisSettings, make_chat: MakeChat
) -> None:
    request = make_chat("twice", reply_to=ADAPTER)
    async with ParleyClient(redis, redis_settings, ADAPTER) as client:
        events = client.adopt(request.id, timeout_s=5.0)
        with pytest.raises(QueueError, match="already in flight"):
            client.adopt(request.id)
        await client.close()  # what is still waiting ends with "unavailable"
        [final] = await collect(events)
    assert isinstance(final, Error) and final.code == "unavailable"
