"""bot/ratelimit.py: the per-user limit and its one notice per blocked spell.

Most cases run on ``limits``' in-memory asyncio storage; the Redis cases use the test Redis
(the ``redis`` fixture), because that is what adapters share across processes.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from limits.aio.storage import MemoryStorage

from bot.errors import ConfigError, QueueError
from bot.ratelimit import RateLimiter, Verdict


async def hits(limiter: RateLimiter, n: int, key: str = "u1") -> list[Verdict]:
    return [await limiter.hit("discord", key) for _ in range(n)]


async def test_allows_up_to_the_rate_then_refuses_with_one_notice() -> None:
    limiter = RateLimiter(MemoryStorage(), "3/minute")
    verdicts = await hits(limiter, 6)
    assert [v.allowed for v in verdicts] == [True, True, True, False, False, False]
    assert [v.notify for v in verdicts] == [False, False, False, True, False, False]
    assert 0 < verdicts[3].retry_after_s <= 60


async def test_users_and_scopes_are_counted_apart() -> None:
    limiter = RateLimiter(MemoryStorage(), "1/minute")
    assert (await limiter.hit("discord", "u1")).allowed
    assert (await limiter.hit("discord", "u2")).allowed
    assert (await limiter.hit("telegram", "u1")).allowed
    refused = await limiter.hit("discord", "u1")
    assert not refused.allowed and refused.notify


async def test_clear_lifts_the_limit() -> None:
    limiter = RateLimiter(MemoryStorage(), "1/minute")
    await hits(limiter, 2)
    await limiter.clear("discord", "u1")
    assert (await limiter.hit("discord", "u1")).allowed


async def test_a_new_blocked_spell_gets_a_new_notice() -> None:
    limiter = RateLimiter(MemoryStorage(), "1/minute")
    first, refused, quiet = await hits(limiter, 3)
    assert first.allowed and refused.notify and not quiet.notify and not quiet.allowed
    await limiter.clear("discord", "u1")  # the window frees up (as time passing would)
    allowed, refused_again = await hits(limiter, 2)
    assert allowed.allowed and not refused_again.allowed and refused_again.notify


@pytest.mark.parametrize("rate", ["", "five per minute", "5/fortnight"])
def test_a_bad_rate_is_a_config_error(rate: str) -> None:
    with pytest.raises(ConfigError, match="invalid rate limit"):
        RateLimiter(MemoryStorage(), rate)


async def test_redis_counters_are_shared_between_limiters(redis: aioredis.Redis) -> None:
    """Two adapter processes (two limiters on one Redis) share one count and one notice."""
    a, b = RateLimiter(redis, "2/minute"), RateLimiter(redis, "2/minute")
    assert (await a.hit("discord", "u1")).allowed
    assert (await b.hit("discord", "u1")).allowed
    refused_a, refused_b = await a.hit("discord", "u1"), await b.hit("discord", "u1")
    assert not refused_a.allowed and refused_a.notify
    assert not refused_b.allowed and not refused_b.notify
    keys = await redis.keys("parley:rl:*")
    assert keys, "rate-limit keys live under parley:rl"


async def test_unreachable_redis_is_a_queue_error() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        with pytest.raises(QueueError, match="rate limit storage failed"):
            await RateLimiter(dead, "2/minute").hit("discord", "u1")
    finally:
        await dead.aclose()
