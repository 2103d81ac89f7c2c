"""The engine's side of replies: events, log entries and acknowledgements in one transaction.

A request is acknowledged only together with its final reply event: :meth:`ReplyWriter.write`
sends every event, exchange and ack of a batch as one MULTI/EXEC, so a crash leaves either
all of it or none of it (and an unacknowledged request is reclaimed by another worker; the
adapter drops the events it has already seen by ``(request_id, seq)``).

Acknowledged requests are also deleted from their stream (XACK + XDEL), so a request stream's
length is its backlog, which is what the adapter's bound (``max_stream_len``) measures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bot import keys, wire
from bot.errors import QueueError
from bot.queue.items import Outgoing
from bot.redis import Redis
from bot.settings import RedisSettings
from bot.wire import ReplyEvent

LOG_STREAM_LEN = 100_000
"""Approximate bound of the conversation log stream (the trainer drains it)."""


class ReplyWriter:
    """Writes batches of :class:`Outgoing` in one round trip each."""

    def __init__(
        self, redis: Redis, settings: RedisSettings, *, log_stream_len: int = LOG_STREAM_LEN
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.log_stream_len = log_stream_len
        self._expiry_set_s: dict[str, float] = {}  # reply stream -> when its TTL was last set

    async def write(
        self, items: Sequence[Outgoing], also: Callable[[Pipeline], object] | None = None
    ) -> None:
        """Append every event and exchange of ``items`` and acknowledge their deliveries,
        all in one transaction; ``also`` queues more commands into it (the engine's history
        and state writes). Raises :class:`QueueError` when Redis fails (then nothing was
        written, and the deliveries stay pending)."""
        if not items and also is None:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            if also is not None:
                also(pipe)
            expiring = self._queue(pipe, items)
            try:
                await pipe.execute()
            except (RedisError, OSError) as e:
                raise QueueError(f"could not write {len(items)} reply item(s): {e}") from e
        now_s = time.monotonic()
        for stream in expiring:
            self._expiry_set_s[stream] = now_s

    def _queue(self, pipe: Pipeline, items: Sequence[Outgoing]) -> list[str]:
        """Queue the commands for ``items``; returns the reply streams whose TTL it sets."""
        reply_len = self.settings.reply_stream_len
        events: dict[str, list[ReplyEvent]] = {}  # reply stream -> its events, in order
        acks: dict[int, list[str]] = {}
        for item in items:
            if item.events:
                events.setdefault(keys.reply_stream(item.reply_to), []).extend(item.events)
            if item.exchange is not None:
                pipe.xadd(
                    keys.LOG_STREAM,
                    {keys.FIELD: wire.encode(item.exchange)},
                    maxlen=self.log_stream_len,
                    approximate=True,
                )
            if item.ack is not None:
                acks.setdefault(item.ack.shard, []).append(item.ack.entry_id)
        for stream, batch in events.items():
            # One entry per adapter per batch: an engine streaming to 64 conversations
            # appends one entry a step, not 64.
            fields = {keys.EVENTS_FIELD: wire.encode_events(batch)}
            pipe.xadd(stream, fields, maxlen=reply_len, approximate=True)  # type: ignore[arg-type]
        expiring = self._due_for_expiry(set(events))
        for stream in expiring:
            pipe.expire(stream, self.settings.reply_stream_ttl_s)
        for shard, entry_ids in acks.items():
            request_stream = keys.request_stream(shard)
            pipe.xack(request_stream, keys.ENGINE_GROUP, *entry_ids)
            pipe.xdel(request_stream, *entry_ids)
        return expiring

    def _due_for_expiry(self, streams: set[str]) -> list[str]:
        """A dead adapter's reply stream expires instead of growing forever. Its TTL is set
        again at most every tenth of the TTL: not one EXPIRE per batch."""
        ttl_s = self.settings.reply_stream_ttl_s
        now_s = time.monotonic()
        return [s for s in streams if now_s - self._expiry_set_s.get(s, -ttl_s) >= ttl_s / 10]
