"""One poller per bot token: a lease in Redis that the polling adapter keeps renewing.

Telegram ends a ``getUpdates`` call when another one arrives for the same token (409
Conflict), so two adapters polling one bot would knock each other out. The adapter that holds
:func:`bot.keys.telegram_poller` polls; any other (another host, a restart overlapping the old
process) waits as a standby and takes over when the lease expires or is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from bot import keys
from bot.redis import Redis

log = logging.getLogger(__name__)

# KEYS[1]: the lease. ARGV[1]: holder, ARGV[2]: ttl (ms). Extends it if ``holder`` holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class PollerLease:
    """The poller lease of bot ``bot_id``, as seen by adapter ``holder``."""

    def __init__(self, redis: Redis, bot_id: int, holder: str, ttl_s: float) -> None:
        self.redis = redis
        self.key = keys.telegram_poller(bot_id)
        self.holder = holder
        self.ttl_ms = max(100, int(ttl_s * 1000))
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def try_acquire(self) -> bool:
        if await self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms):
            return True
        return bool(await self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))

    async def renew(self) -> bool:
        return bool(await self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.holder])

    async def wait_acquired(self, stop: asyncio.Event) -> bool:
        """Acquire the lease, waiting as a standby while another adapter holds it.

        False if ``stop`` was set first.
        """
        told = False
        while not stop.is_set():
            if await self.try_acquire():
                if told:
                    log.info("telegram: the other poller is gone; %s polls now", self.holder)
                return True
            if not told:
                current = await self.redis.get(self.key)
                log.info(
                    "telegram: %s polls this bot; %s waits as a standby",
                    current.decode() if isinstance(current, bytes) else current,
                    self.holder,
                )
                told = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl_ms / 3000)
        return False

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[asyncio.Event]:
        """Keep renewing the (acquired) lease; the event is set if it is lost. Released at exit."""
        lost = asyncio.Event()

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.ttl_ms / 3000)
                try:
                    ok = await self.renew()
                except Exception as e:  # Redis hiccup: try again next round, the TTL is 3x
                    log.warning("telegram: renewing the poller lease failed: %s", e)
                    continue
                if not ok:
                    log.warning("telegram: %s lost the poller lease; stopping polling", self.holder)
                    lost.set()
                    return

        task = asyncio.create_task(renew(), name="telegram-lease")
        try:
            yield lost
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await self.release()
