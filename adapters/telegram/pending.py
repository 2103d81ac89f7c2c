"""Replies owed to Telegram users (:mod:`adapters.owed`), and where each one goes.

An update's offset is confirmed to Telegram once its request is in a request stream; from then
on Telegram will not deliver it again, and the engine answers to the reply stream of the
adapter process that submitted it. Should that process die before it has sent the reply, the
request's :class:`PendingReply` (written right after the submit, before the offset) tells a
later process where the reply goes (chat, topic, the message to quote) and where its events
are. An adapter that becomes the poller (or starts serving the webhook) adopts the records
left (:meth:`adapters.telegram.adapter.TelegramAdapter.adopt`).

The records of one bot are the fields of one hash (:func:`bot.keys.telegram_pending`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from adapters.owed import OwedReplies, OwedReply, stream_id
from bot import keys
from bot.redis import Redis

__all__ = ["PendingReplies", "PendingReply", "stream_id"]


class PendingReply(OwedReply, frozen=True, kw_only=True):
    """What a later process needs to deliver the reply to one Telegram request."""

    chat_id: int
    thread_id: int | None = None
    quote: int | None = None
    """The user's message the reply quotes (in groups)."""
    group: bool = False


class PendingReplies(OwedReplies[PendingReply]):
    """The pending replies of bot ``bot_id``; each kept for at most ``ttl_s``."""

    def __init__(
        self, redis: Redis, bot_id: int, ttl_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(redis, keys.telegram_pending(bot_id), PendingReply, ttl_s, clock)
