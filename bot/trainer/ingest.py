"""Moving the conversation log into the archive: at least once from the stream, once in the
archive.

The trainer reads :data:`bot.keys.LOG_STREAM` as a member of the
:data:`bot.keys.TRAINER_GROUP` consumer group. A batch is archived (one SQLite transaction)
and only then acknowledged and deleted from the stream; a trainer that dies in between gets
the batch again on restart (its pending entries are read first, and entries left pending by
a trainer that never came back are claimed after ``claim_idle_ms``), and the archive stores
each message once (unique by request id and role). Exchanges of opted-out users, of
platforms and chats the settings do not archive, are acknowledged without being archived.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import RedisError, ResponseError

from bot import keys, wire
from bot.archive import AsyncArchive, chat_of
from bot.errors import QueueError, WireError
from bot.redis import Redis
from bot.settings import LearningSettings
from bot.store import ConversationStore
from bot.wire import Exchange

log = logging.getLogger(__name__)

READ_COUNT = 256
_FIELD = keys.FIELD.encode()


@dataclass(frozen=True, slots=True)
class LogEntry:
    entry_id: bytes
    exchange: Exchange | None
    """``None``: unreadable, or deleted from the stream while pending (``/forget``)."""


async def ensure_group(redis: Redis, stream: str) -> None:
    """Create the trainers' group on ``stream`` from its very start (nothing logged before
    the first trainer ran is skipped)."""
    try:
        await redis.xgroup_create(stream, keys.TRAINER_GROUP, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise QueueError(f"cannot create the trainer group on {stream}: {e}") from e


def decode_entries(raw: Sequence[Any]) -> list[LogEntry]:
    entries = []
    for entry_id, fields in raw:
        data = (fields or {}).get(_FIELD)
        exchange = None
        if data is not None:
            try:
                exchange = wire.decode_exchange(data)
            except WireError as e:
                log.warning("dropping unreadable log entry %r: %s", entry_id, e)
        entries.append(LogEntry(entry_id, exchange))
    return entries


class LogArchiver:
    """Reads the log stream into the archive; :meth:`run` until stopped, or step by step
    (:meth:`read`, :meth:`store`, :meth:`ack`)."""

    def __init__(
        self,
        redis: Redis,
        archive: AsyncArchive,
        store: ConversationStore,
        settings: LearningSettings,
        *,
        consumer: str,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.redis = redis
        self.archive = archive
        self.conversations = store
        self.settings = settings
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self._backlog = True  # our own pending entries come first

    async def start(self) -> None:
        await ensure_group(self.redis, keys.LOG_STREAM)

    async def read(self, block_ms: int = 1000) -> list[LogEntry]:
        """The next batch: our pending entries first, then stale ones of other trainers,
        then new ones."""
        try:
            if self._backlog:
                entries = await self._read_group("0", block_ms=None)
                if entries:
                    return entries
                self._backlog = False
            claimed = await self.redis.xautoclaim(
                keys.LOG_STREAM,
                keys.TRAINER_GROUP,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id="0-0",
                count=READ_COUNT,
            )
            if claimed and claimed[1]:
                return decode_entries(claimed[1])
            return await self._read_group(">", block_ms=block_ms)
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot read the conversation log: {e}") from e

    async def _read_group(self, start: str, block_ms: int | None) -> list[LogEntry]:
        response = await self.redis.xreadgroup(
            keys.TRAINER_GROUP,
            self.consumer,
            {keys.LOG_STREAM: start},
            count=READ_COUNT,
            block=block_ms,
        )
        found: list[Any] = []
        for _stream, raw in cast(list[Any], response or []):
            found.extend(raw)
        return decode_entries(found)

    def wanted(self, exchange: Exchange) -> bool:
        """Whether the settings archive this exchange's platform and chat."""
        if exchange.platform not in self.settings.archive_platforms:
            return False
        chats = self.settings.archive_chats
        return (
            not chats
            or f"{exchange.platform}:{chat_of(exchange.conversation, exchange.platform)}" in chats
        )

    async def store(self, entries: Sequence[LogEntry]) -> int:
        """Archive the wanted exchanges of consenting users; returns the new messages."""
        exchanges = [e.exchange for e in entries if e.exchange is not None]
        exchanges = [x for x in exchanges if self.wanted(x)]
        opted_out = await self.conversations.opted_out_among(sorted({x.user for x in exchanges}))
        kept = [x for x in exchanges if x.user not in opted_out]
        if not kept:
            return 0
        return await self.archive.call(lambda a: a.add_exchanges(kept))

    async def ack(self, entries: Sequence[LogEntry]) -> None:
        """Acknowledge and delete archived entries (the archive holds them now)."""
        if not entries:
            return
        ids = [e.entry_id for e in entries]
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(keys.LOG_STREAM, keys.TRAINER_GROUP, *ids)
                pipe.xdel(keys.LOG_STREAM, *ids)
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot acknowledge log entries: {e}") from e

    async def step(self, block_ms: int = 1000) -> int:
        """Read, archive and acknowledge one batch; returns how many entries it took."""
        entries = await self.read(block_ms)
        if entries:
            added = await self.store(entries)
            await self.ack(entries)
            log.debug("archived %d new messages from %d log entries", added, len(entries))
        return len(entries)

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        while not stop.is_set():
            try:
                await self.step()
            except QueueError as e:  # Redis away, or the archive: retry; nothing is lost
                log.warning("archiving the log failed (%s); retrying", e)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("archiving the log failed; retrying")
                await asyncio.sleep(1.0)

    async def forget_log(self, user: str) -> int:
        """Delete ``user``'s entries still in the log stream; returns how many."""
        deleted = 0
        start = "-"
        try:
            while True:
                raw = await self.redis.xrange(keys.LOG_STREAM, min=start, count=1000)
                if not raw:
                    return deleted
                theirs = [
                    e.entry_id
                    for e in decode_entries(raw)
                    if e.exchange and e.exchange.user == user
                ]
                if theirs:
                    deleted += int(await self.redis.xdel(keys.LOG_STREAM, *theirs))
                last = raw[-1][0]
                start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot delete {user}'s log entries: {e}") from e
