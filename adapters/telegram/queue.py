"""The queue client of the Telegram adapter: a :class:`ParleyClient` that says when a request
is in Redis, keeps a record of the reply it owes, and streams adopted replies.

The poller may confirm an update to Telegram only once its request is kept in a request
stream; :meth:`TrackedClient.watch` hands over a future that is settled when the submit of
that request id has finished (appended, refused as full, or failed: in every case the adapter
answers the user from here on, so the update is taken). A watched request given a
:class:`~adapters.telegram.pending.PendingReply` has it stored (with the reply stream's
position from before the submit) once it is appended and before the future is settled, so a
later process can deliver its reply should this one die first.

:meth:`TrackedClient.adopted` makes the next :meth:`~ParleyClient.stream` of a request id
yield the events a client of an earlier process's reply stream adopted
(:meth:`ParleyClient.adopt`) instead of submitting the request again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import msgspec
from redis.exceptions import RedisError

from adapters.telegram.pending import PendingReplies, PendingReply
from bot.queue import ParleyClient
from bot.redis import Redis
from bot.settings import RedisSettings
from bot.wire import ChatRequest, ControlRequest, ReplyEvent

log = logging.getLogger(__name__)


class TrackedClient(ParleyClient):
    """A :class:`ParleyClient` that settles a watched request's future after its submit."""

    def __init__(
        self,
        redis: Redis,
        settings: RedisSettings,
        adapter_id: str,
        pending: PendingReplies | None = None,
    ) -> None:
        super().__init__(redis, settings, adapter_id)
        self.pending = pending
        self._watched: dict[str, tuple[asyncio.Future[None], PendingReply | None]] = {}
        self._adopted: dict[str, AsyncIterator[ReplyEvent]] = {}

    def watch(
        self, request_id: str, taken: asyncio.Future[None], record: PendingReply | None = None
    ) -> None:
        """Settle ``taken`` once the request ``request_id`` has been submitted (and ``record``
        stored, if it was appended)."""
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

    async def _keep(self, record: PendingReply) -> None:
        if self.pending is None:
            return
        try:
            await self.pending.add(record)
        except (RedisError, OSError) as e:  # the reply still streams; only a crash loses it
            log.warning("telegram: could not keep a record of %s: %s", record.request_id, e)
