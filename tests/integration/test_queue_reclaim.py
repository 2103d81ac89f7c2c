"""Dead and slow workers: pending requests are reclaimed exactly once, a live worker keeps
its slow ones, and shard leases move with the workers."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from bot import keys, wire
from bot.queue import (
    Delivery,
    Outgoing,
    ParleyClient,
    RequestConsumer,
    ShardLeases,
    assign,
)
from bot.settings import RedisSettings
from bot.wire import Done, Error
from tests.integration.queue_support import (
    EchoEngine,
    MakeChat,
    backlog,
    collect,
    idle_for,
)


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
        for shard in range(redis_settings.shards):  # acked and deleted: nothing to claim again
            pending = await redis.xpending(keys.request_stream(shard), keys.ENGINE_GROUP)
            assert pending["pending"] == 0
        assert await backlog(redis, redis_settings) == 0
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
    last: Delivery = seen[-1]  # type: ignore[assignment]
    await idle_for(redis, last.shard, last.entry_id, settings.claim_idle_ms)
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
    (taken,) = await first.read(count=10, block_ms=0)
    await idle_for(redis, taken.shard, taken.entry_id, redis_settings.claim_idle_ms)
    # Its own idle entry is left alone while it lives (and its idle time reset) ...
    assert await first.read(count=10, block_ms=0) == []
    # ... and taken back by the same name after a restart, once idle again.
    again = RequestConsumer(redis, redis_settings, "w1", shards=[0, 1])
    await idle_for(redis, taken.shard, taken.entry_id, redis_settings.claim_idle_ms)
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
    (entry,) = taken
    for _ in range(3):  # 1.8x claim_idle_ms in all, never more than 0.6x since the last extend
        await idle_for(redis, entry.shard, entry.entry_id, redis_settings.claim_idle_ms * 6 // 10)
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
    # b dies: once its heartbeat and leases expire, a takes everything back.
    async with asyncio.timeout(5):
        while await a.renew() != frozenset(range(8)):
            await asyncio.sleep(0.05)
    assert len(a.held) == 8


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
