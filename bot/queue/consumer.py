"""The engine's side of requests: read a set of shards as one member of the engines' group.

:meth:`RequestConsumer.read` returns decoded :class:`Delivery` objects and never a bad one:

- an entry that does not decode (:class:`WireError`) is moved to its shard's dead-letter
  stream with the raw bytes and the reason, and acknowledged;
- every ``claim_interval_ms`` it takes over entries that another consumer has held for longer
  than ``claim_idle_ms`` (that worker died or hangs), and returns them again;
- an entry already delivered ``max_deliveries`` times (it keeps killing workers) is
  dead-lettered instead, and its adapter gets a final ``Error(code="internal")`` so the user
  is not left waiting.

Claiming uses XPENDING (with IDLE) and XCLAIM rather than XAUTOCLAIM: XPENDING says how often
each entry was delivered, and lets a consumer leave its own slow-but-alive entries alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from bot import keys, wire
from bot.errors import QueueError, WireError
from bot.queue._replies import Entry, as_str, stream_entries
from bot.queue.items import Delivery, Outgoing
from bot.queue.writer import ReplyWriter
from bot.redis import Redis
from bot.settings import RedisSettings
from bot.wire import Error

log = logging.getLogger(__name__)

DEAD_LETTER_LEN = 10_000
"""Approximate bound of each dead-letter stream."""
CLAIM_BATCH = 100
"""Most idle entries examined per shard per claim pass."""
FINAL_ERROR_SEQ = 2**31 - 1
"""Seq of the error sent for a dead-lettered request: above any seq its worker could have
used, so the adapter's de-duplication never mistakes it for an event it already has."""
INTERNAL_MESSAGE = "Sorry — something went wrong answering this message. Please try again."

_FIELD = keys.FIELD.encode()


class RequestConsumer:
    """Reads requests from ``shards`` (default: all) as ``consumer`` of the engines' group.

    Redis failures raise :class:`QueueError`; the caller's loop backs off and calls again.
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
        self.claim_interval_ms = (
            claim_interval_ms
            if claim_interval_ms is not None
            else max(settings.claim_idle_ms // 2, 50)
        )
        self.writer = ReplyWriter(redis, settings)
        self._shards: tuple[int, ...] = ()
        self._streams: dict[str, int] = {}
        self._cursor: dict[Any, Any] = {}
        self._next_claim_s = 0.0
        self._claimed_own = False
        self.set_shards(range(settings.shards) if shards is None else shards)

    @property
    def shards(self) -> tuple[int, ...]:
        return self._shards

    def set_shards(self, shards: Sequence[int] | range) -> None:
        """Read these shards from now on (leases moved). Call :meth:`ensure_groups` after."""
        self._shards = tuple(sorted(set(shards)))
        self._streams = {keys.request_stream(s): s for s in self._shards}
        self._cursor = {stream: ">" for stream in self._streams}

    # -- setup -------------------------------------------------------------------------------

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
        if now_s >= self._next_claim_s:
            self._next_claim_s = now_s + self.claim_interval_ms / 1000
            claimed = await self.claim(count)
            if claimed:
                return claimed
        try:
            response = await self.redis.xreadgroup(
                keys.ENGINE_GROUP,
                self.consumer,
                self._cursor,
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
        return await self._decode_all(
            (self._streams[as_str(name)], entries, 1) for name, entries in stream_entries(response)
        )

    async def _decode_all(self, batches: Any) -> list[Delivery]:
        """Decode entries into deliveries; dead-letter the ones that do not decode."""
        deliveries: list[Delivery] = []
        dead: list[tuple[int, Entry, str, int]] = []
        for shard, entries, times in batches:
            for entry_id, fields in entries:
                raw = (fields or {}).get(_FIELD)
                if raw is None:
                    dead.append((shard, (entry_id, fields), f"no {keys.FIELD!r} field", times))
                    continue
                try:
                    request = wire.decode_request(raw)
                except WireError as e:
                    dead.append((shard, (entry_id, fields), str(e), times))
                    continue
                deliveries.append(Delivery(shard, as_str(entry_id), request, times))
        if dead:
            await self._dead_letter(dead, notify=False)
        return deliveries

    # -- reclaiming --------------------------------------------------------------------------

    async def claim(self, count: int = CLAIM_BATCH) -> list[Delivery]:
        """Take over entries other consumers have held longer than ``claim_idle_ms``.

        The first pass after start-up also takes this consumer's own idle entries (left from
        before a restart under the same name); later passes leave them to it.
        """
        idle_ms = self.settings.claim_idle_ms
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream in self._streams:
                    pipe.xpending_range(
                        stream, keys.ENGINE_GROUP, "-", "+", min(count, CLAIM_BATCH), idle=idle_ms
                    )
                pending = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as e:
            raise QueueError(f"listing pending requests failed: {e}") from e
        take_own = not self._claimed_own
        self._claimed_own = True
        plans: list[tuple[int, list[Any], dict[bytes, int]]] = []
        for (stream, shard), rows in zip(self._streams.items(), pending, strict=True):
            if isinstance(rows, Exception):  # NOGROUP on a deleted stream: nothing to claim
                log.debug("XPENDING on %s failed: %s", stream, rows)
                continue
            times = {
                r["message_id"]: int(r["times_delivered"])
                for r in rows
                if take_own or as_str(r["consumer"]) != self.consumer
            }
            if times:
                plans.append((shard, list(times), times))
        if not plans:
            return []
        return await self._take(plans, idle_ms)

    async def _take(
        self, plans: list[tuple[int, list[Any], dict[bytes, int]]], idle_ms: int
    ) -> list[Delivery]:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard, entry_ids, _times in plans:
                    # min_idle_time: an entry someone else claimed meanwhile is not returned.
                    pipe.xclaim(
                        keys.request_stream(shard),
                        keys.ENGINE_GROUP,
                        self.consumer,
                        idle_ms,
                        entry_ids,
                    )
                claimed = await pipe.execute()
        except (RedisError, OSError) as e:
            raise QueueError(f"claiming pending requests failed: {e}") from e
        retry: list[tuple[int, list[Entry], int]] = []
        exhausted: list[tuple[int, Entry, str, int]] = []
        for (shard, _ids, times), entries in zip(plans, claimed, strict=True):
            for entry_id, fields in entries:
                delivered = times.get(entry_id, 0)
                if delivered >= self.settings.max_deliveries:
                    reason = f"delivered {delivered} times without an answer"
                    exhausted.append((shard, (entry_id, fields), reason, delivered))
                else:
                    retry.append((shard, [(entry_id, fields)], delivered + 1))
        if exhausted:
            await self._dead_letter(exhausted, notify=True)
        deliveries = await self._decode_all(retry)
        for d in deliveries:
            log.info(
                "request %s reclaimed from shard %d (delivery %d)",
                d.request.id,
                d.shard,
                d.deliveries,
            )
        return deliveries

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Tell other consumers these requests are still being worked on (resets their idle
        time), for answers that take longer than ``claim_idle_ms``."""
        by_shard: dict[int, list[Any]] = {}
        for d in deliveries:
            by_shard.setdefault(d.shard, []).append(d.entry_id)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard, entry_ids in by_shard.items():
                    pipe.xclaim(
                        keys.request_stream(shard),
                        keys.ENGINE_GROUP,
                        self.consumer,
                        0,
                        entry_ids,
                        justid=True,
                    )
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise QueueError(f"extending pending requests failed: {e}") from e

    # -- dead letters ------------------------------------------------------------------------

    async def _dead_letter(
        self, dead: Sequence[tuple[int, Entry, str, int]], *, notify: bool
    ) -> None:
        """Move entries to their dead-letter streams and acknowledge them, in one transaction;
        with ``notify``, also answer each decodable one with a final error."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._queue_dead_letters(pipe, dead, notify=notify)
            try:
                await pipe.execute()
            except (RedisError, OSError) as e:
                raise QueueError(f"dead-lettering {len(dead)} entries failed: {e}") from e

    def _queue_dead_letters(
        self, pipe: Pipeline, dead: Sequence[tuple[int, Entry, str, int]], *, notify: bool
    ) -> None:
        for shard, (entry_id, fields), reason, times in dead:
            raw = (fields or {}).get(_FIELD, b"")
            log.warning("dead-lettering entry %s of shard %d: %s", as_str(entry_id), shard, reason)
            pipe.xadd(
                keys.dead_letter_stream(shard),
                {
                    keys.FIELD: raw,
                    keys.DEAD_REASON_FIELD: reason,
                    keys.DEAD_ID_FIELD: entry_id,
                    keys.DEAD_DELIVERIES_FIELD: times,
                },
                maxlen=DEAD_LETTER_LEN,
                approximate=True,
            )
            request_stream = keys.request_stream(shard)
            pipe.xack(request_stream, keys.ENGINE_GROUP, entry_id)
            pipe.xdel(request_stream, entry_id)
            if notify:
                self._queue_error_reply(pipe, raw)

    def _queue_error_reply(self, pipe: Pipeline, raw: bytes) -> None:
        try:
            request = wire.decode_request(raw)
        except WireError:
            return  # nobody to tell
        stream = keys.reply_stream(request.reply_to)
        event = Error(
            request_id=request.id, seq=FINAL_ERROR_SEQ, code="internal", message=INTERNAL_MESSAGE
        )
        pipe.xadd(
            stream,
            {keys.FIELD: wire.encode(event)},
            maxlen=self.settings.reply_stream_len,
            approximate=True,
        )
        pipe.expire(stream, self.settings.reply_stream_ttl_s)

    # -- writing -----------------------------------------------------------------------------

    async def write(self, items: Sequence[Outgoing]) -> None:
        """:meth:`ReplyWriter.write`: events, exchanges and acks of ``items`` in one go."""
        await self.writer.write(items)
