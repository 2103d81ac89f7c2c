"""Dead letters: request entries that cannot be served, moved aside with the reason.

An entry goes to its shard's dead-letter stream (``keys.dead_letter_stream``) with its raw
bytes, the reason, its id and how often it was delivered, and is acknowledged and deleted
from its request stream in the same transaction. When the entry still decodes (it was
delivered too often, not malformed), its adapter also gets a final ``Error(code="internal")``
so the user is not left waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bot import keys, wire
from bot.errors import QueueError, WireError
from bot.queue._replies import as_str
from bot.redis import Redis
from bot.settings import RedisSettings
from bot.wire import Error

log = logging.getLogger(__name__)

DEAD_LETTER_LEN = 10_000
"""Approximate bound of each dead-letter stream."""
FINAL_ERROR_SEQ = 2**31 - 1
"""Seq of the error sent for a dead-lettered request: above any seq its worker could have
used, so the adapter's de-duplication never mistakes it for an event it already has."""
INTERNAL_MESSAGE = "Sorry — something went wrong answering this message. Please try again."


class DeadEntry(NamedTuple):
    shard: int
    entry_id: bytes | str
    raw: bytes
    reason: str
    deliveries: int


async def dead_letter(
    redis: Redis, settings: RedisSettings, entries: Sequence[DeadEntry], *, notify: bool
) -> None:
    """Move ``entries`` to their dead-letter streams and acknowledge them in one transaction;
    with ``notify``, also answer each one that decodes with a final error."""
    if not entries:
        return
    async with redis.pipeline(transaction=True) as pipe:
        for entry in entries:
            log.warning(
                "dead-lettering entry %s of shard %d: %s",
                as_str(entry.entry_id),
                entry.shard,
                entry.reason,
            )
            _move(pipe, entry)
            if notify:
                _answer_with_error(pipe, settings, entry.raw, entry.deliveries)
        try:
            await pipe.execute()
        except (RedisError, OSError) as e:
            raise QueueError(f"dead-lettering {len(entries)} entries failed: {e}") from e


def _move(pipe: Pipeline, entry: DeadEntry) -> None:
    pipe.xadd(
        keys.dead_letter_stream(entry.shard),
        {
            keys.FIELD: entry.raw,
            keys.DEAD_REASON_FIELD: entry.reason,
            keys.DEAD_ID_FIELD: entry.entry_id,
            keys.DEAD_DELIVERIES_FIELD: entry.deliveries,
        },
        maxlen=DEAD_LETTER_LEN,
        approximate=True,
    )
    request_stream = keys.request_stream(entry.shard)
    pipe.xack(request_stream, keys.ENGINE_GROUP, entry.entry_id)
    pipe.xdel(request_stream, entry.entry_id)


def _answer_with_error(
    pipe: Pipeline, settings: RedisSettings, raw: bytes, deliveries: int
) -> None:
    try:
        request = wire.decode_request(raw)
    except WireError:
        return  # nobody to tell
    stream = keys.reply_stream(request.reply_to)
    event = Error(
        request_id=request.id,
        seq=FINAL_ERROR_SEQ,
        code="internal",
        message=INTERNAL_MESSAGE,
        attempt=deliveries,  # the last attempt: never taken for a stale one's event
    )
    pipe.xadd(
        stream,
        {keys.EVENTS_FIELD: wire.encode_events([event])},
        maxlen=settings.reply_stream_len,
        approximate=True,
    )
    pipe.expire(stream, settings.reply_stream_ttl_s)
