"""The queue client of the Telegram adapter: a :class:`ParleyClient` that says when a request
is in Redis.

The poller may confirm an update to Telegram only once its request is kept in a request
stream; :meth:`TrackedClient.watch` hands over a future that is settled when the submit of
that request id has finished (appended, refused as full, or failed: in every case the adapter
answers the user from here on, so the update is taken).
"""

from __future__ import annotations

import asyncio

from bot.queue import ParleyClient
from bot.redis import Redis
from bot.settings import RedisSettings
from bot.wire import ChatRequest, ControlRequest


class TrackedClient(ParleyClient):
    """A :class:`ParleyClient` that settles a watched request's future after its submit."""

    def __init__(self, redis: Redis, settings: RedisSettings, adapter_id: str) -> None:
        super().__init__(redis, settings, adapter_id)
        self._watched: dict[str, asyncio.Future[None]] = {}

    def watch(self, request_id: str, taken: asyncio.Future[None]) -> None:
        """Settle ``taken`` once the request ``request_id`` has been submitted."""
        self._watched[request_id] = taken

    async def submit(self, request: ChatRequest | ControlRequest) -> None:
        try:
            await super().submit(request)
        finally:
            taken = self._watched.pop(request.id, None)
            if taken is not None and not taken.done():
                taken.set_result(None)
