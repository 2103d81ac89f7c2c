"""The queue client of an adapter that owes replies: a :class:`ParleyClient` that keeps a
record of each reply it owes (:mod:`adapters.owed`), says when a request is in Redis, and
streams adopted replies.

A watched request given a record has it stored (with the reply stream's position from before
the submit) once it is appended; a watched request given a future has it settled when its
submit has finished (appended, refused as full, or failed: Telegram's poller confirms an
update only then).

:meth:`TrackedClient.adopt_from` reads the reply stream of an earlier process for the records
it left, and makes the next :meth:`~ParleyClient.stream` of each of their request ids yield
the adopted events (:meth:`ParleyClient.adopt`) instead of submitting the request again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
from redis.exceptions import RedisError

from adapters.owed import OwedReplies, OwedReply, stream_id
from bot.errors import QueueError
from bot.queue import ParleyClient
from bot.redis import Redis
from bot.settings import RedisSettings
from bot.wire import ChatRequest, ControlRequest, ReplyEvent

log = logging.getLogger(__name__)


class TrackedClient(ParleyClient):
    """A :class:`ParleyClient` that keeps a watched request's record after its submit."""

    def __init__(
        self,
        redis: Redis,
        settings: RedisSettings,
        adapter_id: str,
        pending: OwedReplies[Any] | None = None,
    ) -> None:
        super().__init__(redis, settings, adapter_id)
        self.pending = pending
        self._watched: dict[str, tuple[asyncio.Future[None] | None, OwedReply | None]] = {}
        self._adopted: dict[str, AsyncIterator[ReplyEvent]] = {}

    def watch(
        self,
        request_id: str,
        taken: asyncio.Future[None] | None = None,
        record: OwedReply | None = None,
    ) -> None:
        """At the submit of request ``request_id``: store ``record`` if it was appended, then
        settle ``taken``."""
        self._watched[request_id] = (taken, record)

    def adopted(self, request_id: str, events: AsyncIterator[ReplyEvent]) -> None:
        """The next :meth:`stream` of ``request_id`` yields ``events`` and submits nothing."""
        self._adopted[request_id] = events

    def stream(
        self, request: ChatRequest | ControlRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[ReplyEvent]:
        events = self._adopted.pop(request.id, None)
        if events is not None:
            return events
        return super().stream(request, timeout_s=timeout_s)

    async def submit(self, request: ChatRequest | ControlRequest) -> None:
        taken, record = self._watched.pop(request.id, (None, None))
        after = self.position  # every event of ``request`` comes after this entry
        try:
            await super().submit(request)
            if record is not None:
                await self._keep(msgspec.structs.replace(record, after=after))
        finally:
            if taken is not None and not taken.done():
                taken.set_result(None)

    async def adopt_from(
        self, reply_to: str, records: Sequence[OwedReply], *, timeout_s: float
    ) -> ParleyClient | None:
        """Read ``reply_to``'s reply stream, from before the first event of any of
        ``records``, and hand each one's events to the next :meth:`stream` of its id.

        The reader is returned for the caller to close once the replies are delivered;
        ``None`` if the stream cannot be read (the records stay for a later try).
        """
        source = ParleyClient(self.redis, self.settings, reply_to)
        adopted = {r.request_id: source.adopt(r.request_id, timeout_s=timeout_s) for r in records}
        try:
            await source.start(from_id=min((r.after for r in records), key=stream_id))
        except QueueError as e:
            log.warning("could not read %s for the replies owed: %s", reply_to, e)
            await source.close()
            return None
        for rid, events in adopted.items():
            self.adopted(rid, events)
        return source

    async def _keep(self, record: OwedReply) -> None:
        if self.pending is None:
            return
        try:
            await self.pending.add(record)
        except (RedisError, OSError) as e:  # the reply still streams; only a crash loses it
            log.warning("could not keep a record of %s: %s", record.request_id, e)
