"""Per-user rate limits with one notice per window, on the ``limits`` library.

An adapter asks :meth:`RateLimiter.hit` before it enqueues a user's message. The answer says
whether the message may go on and, when it may not, whether to tell the user: only the first
refusal in a window is answered (``notify``), the rest are dropped quietly, so a user who keeps
typing gets one short notice instead of one per message.

The counters live in Redis (``limits``' asyncio storage over redis-py), so every adapter
process on every host shares them. Tests may pass any ``limits.aio`` storage instead.
Keys are prefixed ``parley:rl`` (limits adds its own suffixes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError

from bot.errors import ConfigError, QueueError
from bot.redis import Redis

KEY_PREFIX = "parley:rl"
"""Prefix of every rate-limit key in Redis."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one message: ``allowed`` to go on; if not, ``notify`` the user or not."""

    allowed: bool
    notify: bool = False
    retry_after_s: float = 0.0
    """When ``allowed`` is false: seconds until the user may send again (0 when unknown)."""


def parse_rate(rate: str) -> RateLimitItem:
    """``"5/minute"``, ``"20 per hour"``… as a ``limits`` item; :class:`ConfigError` if not."""
    try:
        return parse(rate)
    except ValueError as e:
        raise ConfigError(
            f"invalid rate limit {rate!r}: expected e.g. '5/minute' or '20 per hour'"
        ) from e


def redis_storage(redis: Redis) -> Storage:
    """A ``limits`` storage that shares ``redis``'s connection pool (no second connection set)."""
    return RedisStorage(
        "async+redis://",
        implementation="redispy",
        key_prefix=KEY_PREFIX,
        wrap_exceptions=True,
        connection_pool=redis.connection_pool,  # type: ignore[arg-type]
    )


class RateLimiter:
    """``rate`` (``"5/minute"``) per ``(scope, key)``, e.g. ``("discord", user id)``.

    The limit is a moving window: at most ``amount`` messages in any period of the window's
    length. Refused messages do not count. A run of refusals that ends only when the window
    frees a slot is one "blocked spell"; its first refusal has ``notify`` set, the rest not.
    """

    def __init__(self, storage: Storage | Redis, rate: str) -> None:
        self._storage = storage if isinstance(storage, Storage) else redis_storage(storage)
        self._limit = parse_rate(rate)
        self._notice = type(self._limit)(1, self._limit.multiples)
        self._window = MovingWindowRateLimiter(self._storage)
        self._notices = FixedWindowRateLimiter(self._storage)

    @property
    def rate(self) -> str:
        return str(self._limit)

    async def hit(self, scope: str, key: str) -> Verdict:
        """Count one message of ``key`` in ``scope``; :class:`QueueError` if Redis fails."""
        try:
            if await self._window.hit(self._limit, scope, key):
                return Verdict(allowed=True)
            stats = await self._window.get_window_stats(self._limit, scope, key)
            # The window's reset time names this blocked spell: it stays the same while the
            # user is refused (refusals are not counted) and moves on once a message got in.
            spell = f"{stats.reset_time:.6f}"
            notify = await self._notices.hit(self._notice, scope, key, "notice", spell)
        except StorageError as e:
            raise QueueError(f"rate limit storage failed: {e.storage_error}") from e
        return Verdict(allowed=False, notify=notify, retry_after_s=_seconds_until(stats.reset_time))

    async def clear(self, scope: str, key: str) -> None:
        """Forget ``key``'s count (an admin lifting a limit)."""
        try:
            await self._window.clear(self._limit, scope, key)
        except StorageError as e:
            raise QueueError(f"rate limit storage failed: {e.storage_error}") from e


def _seconds_until(reset_time: float) -> float:
    return max(0.0, reset_time - time.time())
