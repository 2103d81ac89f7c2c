"""Entries that cannot be served: malformed or newer requests go to the dead-letter stream,
garbage on a reply stream is skipped; serving goes on."""

from __future__ import annotations

import redis.asyncio as aioredis

from bot import keys, wire
from bot.queue import (
    ParleyClient,
    RequestConsumer,
)
from bot.settings import RedisSettings
from bot.wire import ChatRequest, Done
from tests.integration.queue_support import (
    EchoEngine,
    MakeChat,
    backlog,
    collect,
    wait_until,
)


async def test_malformed_entry_is_dead_lettered_and_serving_goes_on(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    echo_engine: EchoEngine,
    parley_client: ParleyClient,
    make_chat: MakeChat,
) -> None:
    garbage = b"\xc1 not msgpack"
    await redis.xadd(keys.request_stream(0), {keys.FIELD: garbage})
    await redis.xadd(keys.request_stream(1), {"other": b"no m field"})
    events = await collect(parley_client, make_chat("still there?"))
    assert isinstance(events[-1], Done) and events[-1].text == "echo: still there?"
    await wait_until(lambda: True)
    dead0 = await redis.xrange(keys.dead_letter_stream(0))
    dead1 = await redis.xrange(keys.dead_letter_stream(1))
    assert len(dead0) == len(dead1) == 1
    fields = dead0[0][1]
    assert fields[keys.FIELD.encode()] == garbage
    assert b"malformed" in fields[keys.DEAD_REASON_FIELD.encode()]
    assert await backlog(redis, redis_settings) == 0
    assert [d.request.text for d in echo_engine.served] == ["still there?"]  # type: ignore[union-attr]


async def test_newer_wire_version_is_dead_lettered(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    make_chat: MakeChat,
) -> None:
    consumer = RequestConsumer(redis, redis_settings, "w1", shards=[0])
    await consumer.ensure_groups()
    future = ChatRequest(id="f", conversation="c", reply_to="test", text="x", v=99)
    await redis.xadd(keys.request_stream(0), {keys.FIELD: wire.encode(future)})
    assert await consumer.read(count=10, block_ms=0) == []
    dead = await redis.xrange(keys.dead_letter_stream(0))
    assert b"newer" in dead[0][1][keys.DEAD_REASON_FIELD.encode()]


async def test_garbage_on_the_reply_stream_does_not_stop_the_client(
    redis: aioredis.Redis,
    echo_engine: EchoEngine,
    parley_client: ParleyClient,
    make_chat: MakeChat,
) -> None:
    await redis.xadd(keys.reply_stream("test"), {keys.EVENTS_FIELD: b"\xc1"})
    old = Done(request_id="from-before-a-restart", seq=0, text="old")
    await redis.xadd(keys.reply_stream("test"), {keys.EVENTS_FIELD: wire.encode_events([old])})
    events = await collect(parley_client, make_chat("after garbage"))
    assert isinstance(events[-1], Done)
    assert parley_client.healthy
