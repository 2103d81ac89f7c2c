"""Shard leases: which engine worker reads which request shards.

Each worker keeps a heartbeat in one hash (``keys.LEASE_OWNERS``: worker -> expiry, in Redis
server time) and, per shard it holds, a lease key (``keys.shard_lease(s)``: its id, with a PX
expiry) that it renews every ``lease_ms / 3``. Every worker computes the same assignment from
the same list of live workers (see :func:`assign`): balanced (no worker holds more than
``ceil(shards / workers)``) and stable (a shard moves only when its workers come or go). A
worker takes a shard only with ``SET NX``, so two workers never hold one lease; a dead worker's
leases expire after ``lease_ms`` and its shards go to the others, whose consumers then reclaim
its pending requests (:meth:`RequestConsumer.claim`).

A worker that cannot renew for ``lease_ms`` stops reading: by then its leases have expired and
other workers may hold them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Sequence

from redis.exceptions import RedisError

from bot import keys
from bot.errors import QueueError
from bot.queue._replies import as_str
from bot.queue._scripts import LuaScript, call_all
from bot.queue.consumer import RequestConsumer
from bot.redis import Redis
from bot.settings import RedisSettings

log = logging.getLogger(__name__)

DEFAULT_LEASE_MS = 10_000

# KEYS[1]: the owners hash. ARGV[1]: this worker, ARGV[2]: lease in ms.
# Records this worker's heartbeat, forgets expired workers, returns the live ones.
_HEARTBEAT = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live[#live + 1] = all[i]
  end
end
return live
""")

# KEYS[1]: a lease. ARGV[1]: this worker, ARGV[2]: lease in ms. Takes a free lease or extends
# one this worker holds; 1 when this worker holds it afterwards.
_HOLD = LuaScript("""
local owner = redis.call('GET', KEYS[1])
if owner == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""")

# KEYS[1]: a lease. ARGV[1]: this worker. Deletes the lease only if this worker holds it.
_RELEASE = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""")


def assign(shards: int, workers: Sequence[str]) -> dict[int, str]:
    """Shard -> worker: each shard goes to the worker ranked first for it (rendezvous hashing)
    among those below the fair share ``ceil(shards / len(workers))``."""
    if not workers:
        return {}
    cap = math.ceil(shards / len(workers))
    load = dict.fromkeys(workers, 0)
    owner: dict[int, str] = {}
    for shard in range(shards):
        ranked = sorted(workers, key=lambda w: (zlib.crc32(f"{shard}:{w}".encode()), w))
        chosen = next(w for w in ranked if load[w] < cap)
        load[chosen] += 1
        owner[shard] = chosen
    return owner


class ShardLeases:
    """The shard leases of one worker. :meth:`run` keeps them and its consumer's shards."""

    def __init__(
        self,
        redis: Redis,
        settings: RedisSettings,
        worker_id: str,
        *,
        lease_ms: int = DEFAULT_LEASE_MS,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.worker_id = worker_id
        self.lease_ms = lease_ms
        self.held: frozenset[int] = frozenset()
        self._renewed_s = 0.0

    @property
    def renew_interval_s(self) -> float:
        return self.lease_ms / 3000

    async def renew(self) -> frozenset[int]:
        """One round: heartbeat, then hold this worker's share and release the rest.
        Returns the shards held now; :class:`QueueError` when Redis fails."""
        try:
            live = sorted(
                as_str(w)
                for w in await _HEARTBEAT(
                    self.redis, [keys.LEASE_OWNERS], [self.worker_id, self.lease_ms]
                )
            )
            owners = assign(self.settings.shards, live)
            mine = sorted(s for s, w in owners.items() if w == self.worker_id)
            others = sorted(self.held.difference(mine))
            results = await call_all(
                self.redis,
                [(_HOLD, [keys.shard_lease(s)], [self.worker_id, self.lease_ms]) for s in mine]
                + [(_RELEASE, [keys.shard_lease(s)], [self.worker_id]) for s in others],
            )
        except (RedisError, OSError) as e:
            raise QueueError(f"renewing shard leases failed: {e}") from e
        held = {s for s, ok in zip(mine, results, strict=False) if ok}
        if held != self.held:
            log.info(
                "worker %s now holds shards %s (of %d, %d live workers)",
                self.worker_id,
                sorted(held),
                self.settings.shards,
                len(live),
            )
        self.held = frozenset(held)
        self._renewed_s = time.monotonic()
        return self.held

    async def release_all(self) -> None:
        """Give every lease back at once (graceful shutdown), and leave the worker list."""
        try:
            await call_all(
                self.redis,
                [(_RELEASE, [keys.shard_lease(s)], [self.worker_id]) for s in sorted(self.held)],
            )
            await self.redis.hdel(keys.LEASE_OWNERS, self.worker_id)
        except (RedisError, OSError) as e:
            raise QueueError(f"releasing shard leases failed: {e}") from e
        finally:
            self.held = frozenset()

    async def run(self, consumer: RequestConsumer, stop: asyncio.Event) -> None:
        """Renew leases until ``stop`` is set, pointing ``consumer`` at the shards held;
        then release them. Redis errors are logged and retried; after ``lease_ms`` without
        a renewal the consumer reads nothing."""
        consumer.set_shards(())
        while not stop.is_set():
            try:
                held = await self.renew()
            except QueueError as e:
                log.warning("%s", e)
                if time.monotonic() - self._renewed_s > self.lease_ms / 1000:
                    held = self.held = frozenset()
                else:
                    held = self.held
            if set(held) != set(consumer.shards):
                consumer.set_shards(sorted(held))
                with contextlib.suppress(QueueError):
                    await consumer.ensure_groups()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.renew_interval_s):
                    await stop.wait()
        consumer.set_shards(())
        with contextlib.suppress(QueueError):
            await self.release_all()
