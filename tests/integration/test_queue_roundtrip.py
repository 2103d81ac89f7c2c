"""The queue against a real Redis: round trips, bounds, duplicates, the log and the reply
transaction."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from bot import keys, wire
from bot.errors import QueueError, QueueFull
from bot.queue import (
    BUSY_MESSAGE,
    Outgoing,
    ParleyClient,
    ReplyWriter,
)
from bot.settings import RedisSettings
from bot.wire import ControlRequest, Delta, Done, Error
from tests.integration.queue_support import (
    EchoEngine,
    MakeChat,
    backlog,
    collect,
    wait_until,
)


async def test_round_trip(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    echo_engine: EchoEngine,
    parley_client: ParleyClient,
    make_chat: MakeChat,
) -> None:
    events = await collect(parley_client, make_chat("hello"))
    assert [type(e) for e in events] == [Delta, Done]
    assert isinstance(events[-1], Done) and events[-1].text == "echo: hello"
    # Acknowledged with the final event, and deleted: the backlog is empty again.
    assert await backlog(redis, redis_settings) == 0
    for shard in range(redis_settings.shards):
        pending = await redis.xpending(keys.request_stream(shard), keys.ENGINE_GROUP)
        assert pending["pending"] == 0
    # The reply stream expires when its adapter goes away.
    assert 0 < await redis.ttl(keys.reply_stream("test")) <= redis_settings.reply_stream_ttl_s


async def test_control_request_and_reply(
    echo_engine: EchoEngine,
    parley_client: ParleyClient,
) -> None:
    control = ControlRequest(id="c1", conversation="test:chat:1", reply_to="test", command="reset")
    final = await parley_client.reply(control, timeout_s=5)
    assert isinstance(final, Done) and final.request_id == "c1"


async def test_many_concurrent_requests_get_their_own_replies(
    echo_engine: EchoEngine,
    parley_client: ParleyClient,
    make_chat: MakeChat,
) -> None:
    requests = [make_chat(f"message {i}") for i in range(300)]
    finals = await asyncio.gather(*(parley_client.reply(r, timeout_s=10) for r in requests))
    for request, final in zip(requests, finals, strict=True):
        assert isinstance(final, Done)
        assert (final.request_id, final.text) == (request.id, f"echo: {request.text}")
    assert parley_client.in_flight == 0


async def test_requests_written_before_the_engine_started_are_served(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    parley_client: ParleyClient,
    make_chat: MakeChat,
    echo_engine_cls: type[EchoEngine],
) -> None:
    request = make_chat("early")
    await parley_client.submit(request)
    waiting = asyncio.create_task(parley_client.reply(make_chat("second"), timeout_s=5))
    async with echo_engine_cls(redis, redis_settings) as engine:
        final = await waiting
        await wait_until(lambda: len(engine.served) == 2)
    assert isinstance(final, Done)
    assert engine.served[0].request == request


async def test_full_stream_answers_busy_at_once_and_enqueues_nothing(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    make_chat: MakeChat,
) -> None:
    settings = redis_settings.model_copy(update={"max_stream_len": 10, "shards": 1})
    async with ParleyClient(redis, settings, "test") as client:
        await asyncio.gather(*(client.submit(make_chat()) for _ in range(10)))
        with pytest.raises(QueueFull):
            await client.submit(make_chat())
        async with asyncio.timeout(1):
            events = await collect(client, make_chat())
        assert events == [
            Error(request_id=events[0].request_id, seq=0, code="busy", message=BUSY_MESSAGE)
        ]
        # A burst larger than the room left: the first ones fit, the rest are refused.
        await redis.xtrim(keys.request_stream(0), maxlen=7, approximate=False)
        results = await asyncio.gather(
            *(client.submit(make_chat()) for _ in range(5)), return_exceptions=True
        )
        assert [r is None for r in results] == [True, True, True, False, False]
        assert all(isinstance(r, QueueFull) for r in results[3:])
    assert await redis.xlen(keys.request_stream(0)) == 10


async def test_duplicate_events_are_delivered_once(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    parley_client: ParleyClient,
    make_chat: MakeChat,
) -> None:
    request = make_chat("dup")
    replies = asyncio.create_task(collect(parley_client, request))
    await wait_until(lambda: parley_client.in_flight == 1)
    writer = ReplyWriter(redis, redis_settings)
    d0 = Delta(request_id=request.id, seq=0, text="a")
    d1 = Delta(request_id=request.id, seq=1, text="b")
    done = Done(request_id=request.id, seq=2, text="ab")
    await writer.write([Outgoing([d0, d0, d1], "test")])
    await writer.write([Outgoing([d0, d1, done], "test"), Outgoing([done], "test")])
    assert await replies == [d0, d1, done]
    # Each batch is one entry on the adapter's reply stream, its events in order.
    entries = await redis.xrange(keys.reply_stream("test"))
    assert [wire.decode_events(f[b"e"]) for _, f in entries] == [[d0, d0, d1], [d0, d1, done, done]]


async def test_silence_ends_in_unavailable(
    parley_client: ParleyClient,
    make_chat: MakeChat,
) -> None:
    events = await collect(parley_client, make_chat(), timeout_s=0.2)
    assert len(events) == 1 and isinstance(events[0], Error)
    assert events[0].code == "unavailable"
    assert parley_client.in_flight == 0


async def test_same_request_in_flight_twice_is_refused(
    parley_client: ParleyClient,
    make_chat: MakeChat,
) -> None:
    request = make_chat()
    first = asyncio.create_task(collect(parley_client, request, timeout_s=0.3))
    await wait_until(lambda: parley_client.in_flight == 1)
    with pytest.raises(QueueError):
        await collect(parley_client, request)
    await first


async def test_close_ends_waiting_streams(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    make_chat: MakeChat,
) -> None:
    client = ParleyClient(redis, redis_settings, "test")
    await client.start()
    waiting = asyncio.create_task(collect(client, make_chat()))
    await wait_until(lambda: client.in_flight == 1)
    await client.close()
    events = await waiting
    assert isinstance(events[-1], Error) and events[-1].code == "unavailable"


async def test_exchange_goes_to_the_log(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
) -> None:
    exchange = wire.Exchange(
        request_id="r",
        conversation="c",
        platform="web",
        user="u",
        prompt="p",
        reply="r",
        model_version="v1",
        created_ms=1,
    )
    await ReplyWriter(redis, redis_settings).write([Outgoing([], "test", exchange=exchange)])
    ((_, fields),) = await redis.xrange(keys.LOG_STREAM)
    assert wire.decode_exchange(fields[b"m"]) == exchange


async def test_extra_commands_share_the_reply_transaction(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
) -> None:
    writer = ReplyWriter(redis, redis_settings)
    done = Done(request_id="r", seq=0, text="hi")
    await writer.write([Outgoing([done], "test")], also=lambda pipe: pipe.rpush("h", "turn"))
    assert await redis.lrange("h", 0, -1) == [b"turn"]
    assert len(await redis.xrange(keys.reply_stream("test"))) == 1
    await writer.write([], also=lambda pipe: pipe.rpush("h", "alone"))  # no events: still runs
    assert await redis.llen("h") == 2
    # A transaction Redis refuses writes nothing: not the events, not the extra commands.
    with pytest.raises(QueueError):
        await writer.write(
            [Outgoing([done], "test")], also=lambda pipe: pipe.execute_command("NOSUCHCOMMAND")
        )
    assert await redis.llen("h") == 2
    assert len(await redis.xrange(keys.reply_stream("test"))) == 1
