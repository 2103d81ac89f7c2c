"""The record of replies owed (adapters.telegram.pending) against a real Redis: kept until
removed, oldest first; expired, unreadable and newer-version records dropped; the hash
expires with the reply streams."""

from __future__ import annotations

import msgspec
import pytest
import redis.asyncio as aioredis

from adapters.telegram.pending import PendingReplies, PendingReply, stream_id
from bot import keys

BOT_ID = 42
TTL_S = 600


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def owed(request_id: str, created_ms: int = 0) -> PendingReply:
    return PendingReply(
        request_id=request_id,
        reply_to="telegram-host-1",
        after="1700000000000-3",
        conversation="telegram:5:5",
        user="telegram:5",
        chat_id=5,
        created_ms=created_ms,
    )


async def test_kept_until_removed_oldest_first(redis: aioredis.Redis) -> None:
    clock = Clock(1_000.0)
    pending = PendingReplies(redis, BOT_ID, TTL_S, clock=clock)
    await pending.add(owed("b", created_ms=2))
    await pending.add(owed("a", created_ms=1))
    loaded = await pending.load()
    assert [r.request_id for r in loaded] == ["a", "b"]
    assert loaded[0].after == "1700000000000-3"
    assert loaded[0].expires_ms == (1_000 + TTL_S) * 1000
    assert 0 < await redis.ttl(keys.telegram_pending(BOT_ID)) <= TTL_S
    await pending.remove("a")
    assert [r.request_id for r in await pending.load()] == ["b"]


async def test_expired_records_are_dropped(redis: aioredis.Redis) -> None:
    clock = Clock(1_000.0)
    pending = PendingReplies(redis, BOT_ID, TTL_S, clock=clock)
    await pending.add(owed("old"))
    clock.now_s += TTL_S - 1
    await pending.add(owed("new"))
    clock.now_s += 2  # "old" is past its TTL, "new" is not
    assert [r.request_id for r in await pending.load()] == ["new"]
    assert await redis.hkeys(keys.telegram_pending(BOT_ID)) == [b"new"]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"request_id": 5}',
        msgspec.json.encode({**msgspec.to_builtins(owed("x")), "v": 99, "expires_ms": 2**60}),
    ],
    ids=["not-json", "wrong-shape", "newer-version"],
)
async def test_unreadable_records_are_dropped(redis: aioredis.Redis, data: bytes) -> None:
    pending = PendingReplies(redis, BOT_ID, TTL_S)
    await pending.add(owed("good"))
    await redis.hset(keys.telegram_pending(BOT_ID), "bad", data)
    assert [r.request_id for r in await pending.load()] == ["good"]
    assert await redis.hkeys(keys.telegram_pending(BOT_ID)) == [b"good"]


def test_stream_ids_order_as_redis_orders_them() -> None:
    ids = ["1700000000000-10", "1700000000000-9", "999-0", "0-0", "1700000000001"]
    assert sorted(ids, key=stream_id) == [
        "0-0",
        "999-0",
        "1700000000000-9",
        "1700000000000-10",
        "1700000000001",
    ]
