"""The engine's side of requests: read a set of shards as one member of the engines' group.

:meth:`RequestConsumer.read` returns decoded :class:`Delivery` objects and never a bad one:

- an entry that does not decode (:class:`WireError`) is dead-lettered (:mod:`.deadletter`);
- every ``claim_interval_ms`` it takes over entries that another consumer has held for longer
  than ``claim_idle_ms`` (that worker died or hangs) and returns them again; an entry already
  delivered ``max_deliveries`` times (it keeps killing workers) is dead-lettered instead, and
  its adapter gets a final error;
- in the same pass it tells the group that its own requests in flight are still being worked
  on (their idle time is reset), so a long answer is not taken away from a live worker, and
  takes back its own pending entries that nothing works on any more (a failed write, or a
  restart under the same name).

A request is in flight from the :meth:`read` that returns it to the :meth:`write` that
acknowledges it. Claiming uses XPENDING (with IDLE) and XCLAIM rather than XAUTOCLAIM:
XPENDING says how often and by whom each entry was delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from bot import keys, wire
from bot.errors import QueueError, WireError
from bot.queue._replies import Entry, as_str, stream_entries
from bot.queue._scripts import LuaScript, call_all
from bot.queue.deadletter import DeadEntry, dead_letter
from bot.queue.items import Delivery, Outgoing
from bot.queue.writer import ReplyWriter
from bot.redis import Redis
from bot.settings import RedisSettings

log = logging.getLogger(__name__)

CLAIM_BATCH = 100
"""Most idle entries examined per shard per claim pass."""

_FIELD = keys.FIELD.encode()

# KEYS[1]: a request stream. ARGV[1]: the group, ARGV[2]: this consumer, ARGV[3..]: entry ids.
# Resets the idle time of the entries this consumer still owns (without counting a delivery);
# returns their ids. Entries another consumer took over meanwhile are left to it.
_KEEP = LuaScript("""
local kept = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept[#kept + 1] = ARGV[i]
  end
end
return kept
""")

_Plan = tuple[int, list[bytes], dict[bytes, int]]
"""A shard, the pending entry ids to claim on it, and how often each was delivered."""


class RequestConsumer:
    """Reads requests from ``shards`` (default: all) as ``consumer`` of the engines' group.

    Redis failures raise :class:`QueueError`; the caller's loop backs off and calls again.
    Acknowledge through :meth:`write` (or call :meth:`forget` after acknowledging elsewhere).
    """

    def __init__(
        self,
        redis: Redis,
        settings: RedisSettings,
        consumer: str,
        shards: Sequence[int] | None = None,
        *,
        claim_interval_ms: int | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.consumer = consumer
        if claim_interval_ms is None:
            claim_interval_ms = max(settings.claim_idle_ms // 3, 50)
        self.claim_interval_ms = claim_interval_ms
        self.writer = ReplyWriter(redis, settings)
        self._shards: tuple[int, ...] = ()
        self._streams: dict[str, int] = {}
        self._in_flight: dict[tuple[int, str], float] = {}  # (shard, entry id) -> last touch
        self._next_upkeep_s = 0.0
        self.set_shards(range(settings.shards) if shards is None else shards)

    @property
    def shards(self) -> tuple[int, ...]:
        return self._shards

    @property
    def in_flight(self) -> int:
        """Requests read and not yet acknowledged through :meth:`write`."""
        return len(self._in_flight)

    def set_shards(self, shards: Iterable[int]) -> None:
        """Read these shards from now on (leases moved). Call :meth:`ensure_groups` after."""
        self._shards = tuple(sorted(set(shards)))
        self._streams = {keys.request_stream(s): s for s in self._shards}

    async def ensure_groups(self) -> None:
        """Create the engines' group on every shard's stream (and the stream), if missing."""
        try:
            for stream in self._streams:
                try:
                    # From "0": requests appended before the first engine ever ran are served.
                    await self.redis.xgroup_create(stream, keys.ENGINE_GROUP, id="0", mkstream=True)
                except ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise
        except (RedisError, OSError) as e:
            raise QueueError(f"could not create consumer groups: {e}") from e

    # -- reading -----------------------------------------------------------------------------

    async def read(self, count: int, block_ms: int) -> list[Delivery]:
        """Up to ``count`` requests per shard: reclaimed ones when a claim pass is due and
        finds some, else new ones, waiting up to ``block_ms`` (0: return at once)."""
        if not self._shards:
            await asyncio.sleep(block_ms / 1000)
            return []
        now_s = time.monotonic()
        if now_s >= self._next_upkeep_s:
            self._next_upkeep_s = now_s + self.claim_interval_ms / 1000
            await self._keep_in_flight(now_s)
            claimed = await self.claim(count)
            if claimed:
                return claimed
        streams = self._streams  # set_shards may swap it while we wait
        sent_s = time.monotonic()
        try:
            response = await self.redis.xreadgroup(
                keys.ENGINE_GROUP,
                self.consumer,
                dict.fromkeys(streams, ">"),
                count=count,
                block=block_ms if block_ms > 0 else None,
            )
        except ResponseError as e:
            if "NOGROUP" in str(e):  # a stream was deleted under us: recreate and go on
                log.warning("consumer group missing (%s); recreating", e)
                await self.ensure_groups()
                return []
            raise QueueError(f"reading requests failed: {e}") from e
        except (RedisError, OSError) as e:
            raise QueueError(f"reading requests failed: {e}") from e
        batches = [
            (streams[as_str(name)], entries, 1) for name, entries in stream_entries(response)
        ]
        return self._track(await self._decode(batches), sent_s)

    async def _decode(self, batches: Sequence[tuple[int, list[Entry], int]]) -> list[Delivery]:
        """Decode entries into deliveries; dead-letter the ones that do not decode."""
        deliveries: list[Delivery] = []
        dead: list[DeadEntry] = []
        for shard, entries, times in batches:
            for entry_id, fields in entries:
                raw = (fields or {}).get(_FIELD)
                if raw is None:
                    dead.append(DeadEntry(shard, entry_id, b"", f"no {keys.FIELD!r} field", times))
                    continue
                try:
                    request = wire.decode_request(raw)
                except WireError as e:
                    dead.append(DeadEntry(shard, entry_id, raw, str(e), times))
                    continue
                deliveries.append(Delivery(shard, as_str(entry_id), request, times))
        try:
            await dead_letter(self.redis, self.settings, dead, notify=False)
        except QueueError as e:  # they stay pending and come back through claim()
            log.warning("%s", e)
        return deliveries

    def _track(self, deliveries: list[Delivery], sent_s: float) -> list[Delivery]:
        # The time the call was sent: Redis reset the entries' idle time after it, so no
        # other consumer can claim them before sent_s + claim_idle_ms (see lost()).
        for d in deliveries:
            self._in_flight[(d.shard, d.entry_id)] = sent_s
        return deliveries

    # -- in flight ---------------------------------------------------------------------------

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Reset the idle time of these requests so no other consumer reclaims them.
        :meth:`read` does it for every request in flight; this is for callers in a hurry."""
        await self._keep([(d.shard, d.entry_id) for d in deliveries])

    def forget(self, deliveries: Sequence[Delivery]) -> None:
        """No longer track these requests (they were acknowledged other than by :meth:`write`)."""
        for d in deliveries:
            self._in_flight.pop((d.shard, d.entry_id), None)

    async def _keep_in_flight(self, now_s: float) -> None:
        due_s = now_s - self.settings.claim_idle_ms / 3000
        stale = [key for key, touched_s in self._in_flight.items() if touched_s <= due_s]
        if stale:
            await self._keep(stale)

    async def _keep(self, entries: Sequence[tuple[int, str]]) -> None:
        by_shard: dict[int, list[str]] = {}
        for shard, entry_id in entries:
            by_shard.setdefault(shard, []).append(entry_id)
        calls = [
            (_KEEP, [keys.request_stream(s)], [keys.ENGINE_GROUP, self.consumer, *ids])
            for s, ids in by_shard.items()
        ]
        sent_s = time.monotonic()
        try:
            kept_lists = await call_all(self.redis, calls)
        except (RedisError, OSError) as e:
            raise QueueError(f"keeping requests in flight failed: {e}") from e
        for (shard, ids), kept in zip(by_shard.items(), kept_lists, strict=True):
            kept_ids = {as_str(k) for k in kept}
            for entry_id in ids:
                if entry_id in kept_ids:
                    self._in_flight[(shard, entry_id)] = sent_s
                elif self._in_flight.pop((shard, entry_id), None) is not None:
                    log.info("entry %s of shard %d is no longer ours", entry_id, shard)

    async def lost(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Of these requests read here, the ones another consumer has taken over meanwhile
        (this worker stalled past ``claim_idle_ms``): their answers must not be written, for
        the other consumer answers them. The rest are kept in flight.

        Costs a round trip only for requests not kept alive within ``claim_idle_ms / 2``:
        until ``claim_idle_ms`` after that, no other consumer can have claimed them.
        """
        now_s = time.monotonic()
        safe_s = self.settings.claim_idle_ms / 2000
        unsure: list[tuple[int, str]] = []
        for d in deliveries:
            touched_s = self._in_flight.get((d.shard, d.entry_id))
            if touched_s is not None and now_s - touched_s >= safe_s:
                unsure.append((d.shard, d.entry_id))
        if unsure:
            await self._keep(unsure)  # drops from _in_flight what is no longer ours
        return [d for d in deliveries if (d.shard, d.entry_id) not in self._in_flight]

    # -- reclaiming --------------------------------------------------------------------------

    async def claim(self, count: int = CLAIM_BATCH) -> list[Delivery]:
        """Take over entries pending longer than ``claim_idle_ms`` on other consumers, or on
        this one but not in flight; dead-letter those delivered ``max_deliveries`` times."""
        streams = dict(self._streams)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xpending_range(
                        stream,
                        keys.ENGINE_GROUP,
                        "-",
                        "+",
                        min(count, CLAIM_BATCH),
                        idle=self.settings.claim_idle_ms,
                    )
                pending = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as e:
            raise QueueError(f"listing pending requests failed: {e}") from e
        plans: list[_Plan] = []
        for (stream, shard), rows in zip(streams.items(), pending, strict=True):
            if isinstance(rows, Exception):  # NOGROUP on a deleted stream: nothing to claim
                log.debug("XPENDING on %s failed: %s", stream, rows)
                continue
            times = {
                r["message_id"]: int(r["times_delivered"])
                for r in rows
                if not self._ours_in_flight(shard, r)
            }
            if times:
                plans.append((shard, list(times), times))
        sent_s = time.monotonic()
        return self._track(await self._take(plans), sent_s) if plans else []

    def _ours_in_flight(self, shard: int, row: dict[str, Any]) -> bool:
        return (
            as_str(row["consumer"]) == self.consumer
            and (shard, as_str(row["message_id"])) in self._in_flight
        )

    async def _take(self, plans: list[_Plan]) -> list[Delivery]:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard, entry_ids, _times in plans:
                    # min_idle_time: an entry someone else claimed meanwhile is not returned.
                    pipe.xclaim(
                        keys.request_stream(shard),
                        keys.ENGINE_GROUP,
                        self.consumer,
                        self.settings.claim_idle_ms,
                        entry_ids,  # type: ignore[arg-type]
                    )
                claimed = await pipe.execute()
        except (RedisError, OSError) as e:
            raise QueueError(f"claiming pending requests failed: {e}") from e
        retry: list[tuple[int, list[Entry], int]] = []
        exhausted: list[DeadEntry] = []
        for (shard, _ids, times), entries in zip(plans, claimed, strict=True):
            for entry_id, fields in entries:
                delivered = times.get(entry_id, 0)
                if delivered >= self.settings.max_deliveries:
                    reason = f"delivered {delivered} times without an answer"
                    raw = (fields or {}).get(_FIELD, b"")
                    exhausted.append(DeadEntry(shard, entry_id, raw, reason, delivered))
                else:
                    retry.append((shard, [(entry_id, fields)], delivered + 1))
        try:
            await dead_letter(self.redis, self.settings, exhausted, notify=True)
        except QueueError as e:  # now pending on us, not in flight: the next pass retries
            log.warning("%s", e)
        deliveries = await self._decode(retry)
        for d in deliveries:
            log.info(
                "request %s reclaimed on shard %d (delivery %d)",
                d.request.id,
                d.shard,
                d.deliveries,
            )
        return deliveries

    # -- writing -----------------------------------------------------------------------------

    async def write(
        self, items: Sequence[Outgoing], also: Callable[[Pipeline], object] | None = None
    ) -> None:
        """:meth:`ReplyWriter.write`: events, exchanges and acks of ``items`` (and what
        ``also`` queues) in one transaction.

        The deliveries acknowledged here are no longer in flight even when the write fails:
        they stay pending, and a later claim pass hands them out again.
        """
        try:
            await self.writer.write(items, also)
        finally:
            for item in items:
                if item.ack is not None:
                    self._in_flight.pop((item.ack.shard, item.ack.entry_id), None)
