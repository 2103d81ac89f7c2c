"""The queue against a real Redis: round trips, dead letters, reclaiming, bounds, duplicates."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot import keys, wire
from bot.embedded import EmbeddedRedis
from bot.errors import QueueError, QueueFull
from bot.queue import (
    BUSY_MESSAGE,
    Delivery,
    Outgoing,
    ParleyClient,
    ReplyWriter,
    RequestConsumer,
    ShardLeases,
    assign,
)
from bot.redis import connect, ping
from bot.settings import RedisSettings
from bot.wire import ChatRequest, ControlRequest, Delta, Done, Error, ReplyEvent

MakeChat = Callable[..., ChatRequest]
EchoEngine = Any  # tests/integration/conftest.py; reached through the echo_engine_cls fixture


async def collect(
    client: ParleyClient, request: ChatRequest, timeout_s: float = 5.0
) -> list[ReplyEvent]:
    return [e async for e in client.stream(request, timeout_s=timeout_s)]


async def backlog(redis: aioredis.Redis, settings: RedisSettings) -> int:
    return sum([await redis.xlen(keys.request_stream(s)) for s in range(settings.shards)])


async def wait_until(predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


# -- the happy path ----------------------------------------------------------------------------


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


# -- bad entries -------------------------------------------------------------------------------


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


# -- dead workers ------------------------------------------------------------------------------


async def test_request_of_a_dead_consumer_is_reclaimed_once(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    parley_client: ParleyClient,
    make_chat: MakeChat,
    echo_engine_cls: type[EchoEngine],
) -> None:
    dead = RequestConsumer(redis, redis_settings, "dead")
    await dead.ensure_groups()
    request = make_chat("are you there?")
    replies = asyncio.create_task(collect(parley_client, request))
    taken = []
    async with asyncio.timeout(5):
        while not taken:
            taken = await dead.read(count=10, block_ms=50)
    assert [d.request for d in taken] == [request]  # ... and it never answers.

    async with echo_engine_cls(redis, redis_settings, consumer="alive") as engine:
        events = await replies
        assert [d.deliveries for d in engine.served] == [2]
        assert [d.request for d in engine.served] == [request]
        await asyncio.sleep(redis_settings.claim_idle_ms * 2 / 1000)
        assert len(engine.served) == 1  # acked: not claimed again
    finals = [e for e in events if wire.is_final(e)]
    assert len(finals) == 1 and isinstance(finals[0], Done)
    entries = await redis.xrange(keys.reply_stream("test"))
    stored = [event for _, fields in entries for event in wire.decode_events(fields[b"e"])]
    assert sum(wire.is_final(event) for event in stored) == 1


async def test_request_delivered_too_often_is_dead_lettered_and_answered(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    parley_client: ParleyClient,
    make_chat: MakeChat,
) -> None:
    settings = redis_settings.model_copy(update={"max_deliveries": 2})
    workers = [RequestConsumer(redis, settings, f"crashy-{i}") for i in range(3)]
    await workers[0].ensure_groups()
    request = make_chat("poison")
    replies = asyncio.create_task(collect(parley_client, request))
    seen = []
    for worker in workers[:2]:  # each takes it and dies
        got: list[object] = []
        async with asyncio.timeout(5):
            while not got:
                got = await worker.read(count=10, block_ms=50)  # type: ignore[assignment]
        seen.extend(got)
    assert [d.deliveries for d in seen] == [1, 2]  # type: ignore[attr-defined]
    await asyncio.sleep(settings.claim_idle_ms * 1.5 / 1000)
    assert await workers[2].read(count=10, block_ms=0) == []
    events = await replies
    assert len(events) == 1 and isinstance(events[0], Error)
    assert events[0].code == "internal"
    dead = await redis.xrange(keys.dead_letter_stream(keys.shard_for(request.conversation, 2)))
    assert len(dead) == 1 and wire.decode_request(dead[0][1][b"m"]) == request
    assert await backlog(redis, settings) == 0


async def test_restarted_consumer_takes_back_its_own_entries(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    make_chat: MakeChat,
) -> None:
    first = RequestConsumer(redis, redis_settings, "w1", shards=[0, 1])
    await first.ensure_groups()
    await redis.xadd(keys.request_stream(0), {keys.FIELD: wire.encode(make_chat())})
    assert len(await first.read(count=10, block_ms=0)) == 1
    await asyncio.sleep(redis_settings.claim_idle_ms * 1.5 / 1000)
    # Its own idle entry is left alone while it lives ...
    assert await first.read(count=10, block_ms=0) == []
    # ... and taken back by the same name after a restart.
    again = RequestConsumer(redis, redis_settings, "w1", shards=[0, 1])
    await asyncio.sleep(redis_settings.claim_idle_ms * 1.5 / 1000)
    assert [d.deliveries for d in await again.read(count=10, block_ms=0)] == [2]


async def test_extend_keeps_a_slow_request_from_being_reclaimed(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    make_chat: MakeChat,
) -> None:
    slow = RequestConsumer(redis, redis_settings, "slow")
    other = RequestConsumer(redis, redis_settings, "other")
    await slow.ensure_groups()
    await redis.xadd(keys.request_stream(0), {keys.FIELD: wire.encode(make_chat())})
    taken = await slow.read(count=10, block_ms=0)
    for _ in range(3):
        await asyncio.sleep(redis_settings.claim_idle_ms * 0.6 / 1000)
        await slow.extend(taken)
        assert await other.claim() == []


async def test_a_live_consumer_keeps_its_slow_requests(
    redis: aioredis.Redis, redis_settings: RedisSettings, make_chat: MakeChat
) -> None:
    slow = RequestConsumer(redis, redis_settings, "slow")
    other = RequestConsumer(redis, redis_settings, "other")
    await slow.ensure_groups()
    await redis.xadd(keys.request_stream(0), {keys.FIELD: wire.encode(make_chat())})
    assert len(await slow.read(count=10, block_ms=0)) == 1
    async with asyncio.timeout(5):
        for _ in range(10):  # 3x claim_idle_ms, both reading all along
            assert await slow.read(count=10, block_ms=20) == []
            assert await other.read(count=10, block_ms=40) == []
    assert slow.in_flight == 1 and other.in_flight == 0


async def test_a_request_nothing_works_on_comes_back_to_its_consumer(
    redis: aioredis.Redis, redis_settings: RedisSettings, make_chat: MakeChat
) -> None:
    worker = RequestConsumer(redis, redis_settings, "only")
    await worker.ensure_groups()
    await redis.xadd(keys.request_stream(0), {keys.FIELD: wire.encode(make_chat())})
    (lost,) = await worker.read(count=10, block_ms=0)
    worker.forget([lost])  # as after a write that failed
    again: list[Delivery] = []
    async with asyncio.timeout(5):
        while not again:
            again = await worker.read(count=10, block_ms=20)
    assert [(d.entry_id, d.deliveries) for d in again] == [(lost.entry_id, 2)]


# -- bounds and duplicates ---------------------------------------------------------------------


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


# -- connections and the embedded server -------------------------------------------------------


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


# -- shard leases ------------------------------------------------------------------------------


def test_assignment_is_balanced_and_stable() -> None:
    for shards in (1, 4, 16, 64):
        for n in range(1, 7):
            workers = [f"w{i}" for i in range(n)]
            owners = assign(shards, workers)
            assert sorted(owners) == list(range(shards))
            loads = [list(owners.values()).count(w) for w in workers]
            assert max(loads) <= -(-shards // n)
            assert assign(shards, list(reversed(workers))) == owners  # order does not matter
    before = assign(64, ["a", "b", "c", "d"])
    after = assign(64, ["a", "b", "c", "d", "e"])
    moved = sum(before[s] != after[s] for s in range(64))
    assert moved <= 64 // 2  # a newcomer takes its share, not a reshuffle


async def test_leases_split_the_shards_and_move_when_a_worker_dies(
    redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    settings = redis_settings.model_copy(update={"shards": 8})
    a = ShardLeases(redis, settings, "a", lease_ms=300)
    b = ShardLeases(redis, settings, "b", lease_ms=300)
    assert await a.renew() == frozenset(range(8))  # alone: everything
    await b.renew()  # b sees two workers, but a still holds every lease
    assert b.held == frozenset()
    await a.renew()  # a gives up b's share ...
    await b.renew()  # ... and b takes it
    assert len(a.held) == len(b.held) == 4 and not a.held & b.held
    for shard in range(8):
        owner = await redis.get(keys.shard_lease(shard))
        assert owner == (b"a" if shard in a.held else b"b")
    # b dies: its heartbeat and leases expire and a takes everything back.
    await asyncio.sleep(0.4)
    assert await a.renew() == frozenset(range(8))


async def test_released_leases_are_taken_at_once(
    redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    a = ShardLeases(redis, redis_settings, "a", lease_ms=60_000)
    b = ShardLeases(redis, redis_settings, "b", lease_ms=60_000)
    await a.renew()
    await b.renew()
    await a.renew()
    await b.renew()
    assert a.held and b.held
    await b.release_all()
    assert b.held == frozenset()
    assert await a.renew() == frozenset(range(redis_settings.shards))


async def test_leased_consumer_serves_and_takes_over_a_dead_workers_requests(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    make_chat: MakeChat,
) -> None:
    settings = redis_settings.model_copy(update={"shards": 1})
    dead = RequestConsumer(redis, settings, "dead")
    dead_leases = ShardLeases(redis, settings, "dead", lease_ms=300)
    await dead_leases.renew()
    dead.set_shards(dead_leases.held)
    await dead.ensure_groups()
    request = make_chat("who serves me?")
    async with ParleyClient(redis, settings, "test") as client:
        replies = asyncio.create_task(collect(client, request))
        async with asyncio.timeout(5):
            while not await dead.read(count=10, block_ms=50):
                pass
        # "dead" stops renewing; "alive" gets the shard once the lease expires, then reclaims.
        alive = RequestConsumer(redis, settings, "alive", shards=())
        leases = ShardLeases(redis, settings, "alive", lease_ms=300)
        stop = asyncio.Event()
        keeper = asyncio.create_task(leases.run(alive, stop))
        served = []
        async with asyncio.timeout(5):
            while not served:
                served = await alive.read(count=10, block_ms=20)
        assert [d.request for d in served] == [request] and served[0].deliveries == 2
        assert alive.shards == (0,)
        await alive.write(
            [Outgoing([Done(request_id=request.id, seq=0, text="me")], "test", ack=served[0])]
        )
        events = await replies
        stop.set()
        await keeper
    assert events == [Done(request_id=request.id, seq=0, text="me")]
    assert alive.shards == ()
    assert await redis.get(keys.shard_lease(0)) is None  # released on the way out


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
            await asyncio.sleep(0.2)
            assert not parley.healthy
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
