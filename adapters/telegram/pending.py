"""Replies owed to users, kept in Redis until they are delivered, so a restart delivers them.

An update's offset is confirmed to Telegram once its request is in a request stream; from then
on Telegram will not deliver it again, and the engine answers to the reply stream of the
adapter process that submitted it. Should that process die before it has sent the reply, the
request's :class:`PendingReply` (written right after the submit, before the offset) tells a
later process where the reply goes (chat, topic, the message to quote) and where its events
are (the reply stream of ``reply_to``, after entry ``after``). It is removed once the reply has
been delivered; an adapter that becomes the poller (or starts serving the webhook) adopts the
records left (:meth:`adapters.telegram.adapter.TelegramAdapter.adopt`).

The records of one bot are the fields of one hash (:func:`bot.keys.telegram_pending`), each a
versioned JSON struct. A record older than ``ttl_s`` (the service passes
``redis.reply_stream_ttl_s``, the life of an idle reply stream) is dropped when the records
are loaded; the hash itself expires ``ttl_s`` after the last record was added.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec

from bot import keys
from bot.redis import Redis

log = logging.getLogger(__name__)

VERSION = 1


class PendingReply(msgspec.Struct, frozen=True, kw_only=True):
    """What a later process needs to deliver the reply to one Telegram request."""

    v: int = VERSION
    request_id: str
    reply_to: str
    """The adapter id whose reply stream receives the request's events."""
    after: str = "0-0"
    """A reply-stream entry id that every event of the request comes after."""
    conversation: str
    user: str
    chat_id: int
    thread_id: int | None = None
    quote: int | None = None
    """The user's message the reply quotes (in groups)."""
    group: bool = False
    created_ms: int = 0
    expires_ms: int = 0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PendingReply)


def stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a pair that orders as Redis orders ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class PendingReplies:
    """The pending replies of bot ``bot_id``; each kept for at most ``ttl_s``."""

    def __init__(
        self, redis: Redis, bot_id: int, ttl_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.key = keys.telegram_pending(bot_id)
        self.ttl_s = ttl_s
        self._clock = clock

    async def add(self, reply: PendingReply) -> None:
        """Keep ``reply`` (its ``expires_ms`` set to now + ``ttl_s``) until :meth:`remove`."""
        expires_ms = int((self._clock() + self.ttl_s) * 1000)
        data = _encoder.encode(msgspec.structs.replace(reply, expires_ms=expires_ms))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key, reply.request_id, data)
        pipe.expire(self.key, self.ttl_s)
        await pipe.execute()

    async def remove(self, request_id: str) -> None:
        """The reply to ``request_id`` was delivered (or can never be): forget it."""
        await self.redis.hdel(self.key, request_id)

    async def load(self) -> list[PendingReply]:
        """Every reply still owed, oldest first; expired and unreadable records are dropped."""
        raw = await self.redis.hgetall(self.key)
        now_ms = int(self._clock() * 1000)
        kept: list[PendingReply] = []
        dropped: list[bytes | str] = []
        for field, data in raw.items():
            try:
                reply = _decoder.decode(data)
            except msgspec.DecodeError as e:  # not JSON, or not a PendingReply
                log.warning("telegram: dropping an unreadable pending reply %r: %s", field, e)
                dropped.append(field)
                continue
            if reply.v > VERSION or reply.expires_ms <= now_ms:
                dropped.append(field)
                continue
            kept.append(reply)
        if dropped:
            await self.redis.hdel(self.key, *dropped)
        kept.sort(key=lambda r: r.created_ms)
        return kept
