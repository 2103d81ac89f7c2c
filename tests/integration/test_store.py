"""The conversation store against a real Redis: history, spilled state, reset, forget, consent."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from bot import keys
from bot.errors import QueueError
from bot.store import ConversationStore, Stored
from bot.wire import Turn


def turns(n: int) -> tuple[Turn, Turn]:
    return Turn("user", f"question {n}"), Turn("bot", f"answer {n}")


async def store_exchanges(store: ConversationStore, conv: str, user: str, count: int) -> None:
    async with store.redis.pipeline(transaction=True) as pipe:
        for n in range(count):
            store.append_exchange(pipe, conv, user, *turns(n))
        await pipe.execute()


async def test_history_keeps_the_newest_turns_in_order(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis, ttl_s=600, history_max_turns=4)
    await store_exchanges(store, "web:a:a", "a", 3)
    assert await store.history("web:a:a") == (*turns(1), *turns(2))
    assert 0 < await redis.ttl(keys.history("web:a:a")) <= 600
    assert await store.history("web:none:none") == ()


async def test_load_returns_history_and_spilled_state_per_conversation(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis, ttl_s=600)
    await store_exchanges(store, "web:a:a", "a", 1)
    async with redis.pipeline(transaction=True) as pipe:
        store.spill(pipe, "web:b:b", b"state-bytes")
        await pipe.execute()
    loaded = await store.load(["web:a:a", "web:b:b"])
    assert loaded == {
        "web:a:a": Stored(turns(0), None),
        "web:b:b": Stored((), b"state-bytes"),
    }


async def test_an_unreadable_stored_turn_is_dropped_not_fatal(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis, ttl_s=600)
    await store_exchanges(store, "web:a:a", "a", 1)
    await redis.rpush(keys.history("web:a:a"), b"\xc1 not msgpack")
    assert await store.history("web:a:a") == turns(0)


async def test_reset_deletes_one_conversation_only(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis, ttl_s=600)
    await store_exchanges(store, "web:a:a", "a", 1)
    await store_exchanges(store, "web:b:b", "b", 1)
    await store.reset("web:a:a")
    assert await store.history("web:a:a") == ()
    assert await store.history("web:b:b") == turns(0)


async def test_forget_deletes_every_conversation_of_the_user_and_opts_them_out(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis, ttl_s=600)
    await store_exchanges(store, "discord:1:u", "u", 1)
    await store_exchanges(store, "web:2:u", "u", 1)
    await store_exchanges(store, "web:3:other", "other", 1)
    async with redis.pipeline(transaction=True) as pipe:
        store.spill(pipe, "web:2:u", b"state")
        await pipe.execute()

    forgotten = await store.forget("u", also=["telegram:9:u"])

    assert forgotten.conversations == ("discord:1:u", "telegram:9:u", "web:2:u")
    loaded = await store.load(["discord:1:u", "web:2:u", "web:3:other"])
    assert loaded["discord:1:u"] == Stored((), None)
    assert loaded["web:2:u"] == Stored((), None)
    assert loaded["web:3:other"].history == turns(0)
    assert await redis.exists(keys.user_conversations("u")) == 0
    assert await store.is_opted_out("u")
    assert not await store.is_opted_out("other")


async def test_opt_out_and_in(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis, ttl_s=600)
    await store.opt_out("b")
    await store.opt_out("a")
    assert await store.opted_out_users() == ["a", "b"]
    await store.opt_in("b")
    assert await store.opted_out_users() == ["a"]
    assert not await store.is_opted_out("b")


async def test_redis_failing_is_a_queue_error() -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    store = ConversationStore(dead, ttl_s=600)
    try:
        with pytest.raises(QueueError, match="could not read the opted-out users"):
            await store.opted_out_users()
        with pytest.raises(QueueError, match="could not read 1 conversation"):
            await store.history("web:a:a")
    finally:
        await dead.aclose()
