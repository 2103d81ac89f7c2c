"""Replies owed to users, kept in Redis until they are delivered, so a restart delivers them.

Once a chat request is in a request stream, the engine answers to the reply stream of the
adapter process that submitted it. Should that process die before it has delivered the reply,
the request's record (an :class:`OwedReply`, written right after the submit) tells a later
process where the reply's events are (the reply stream of ``reply_to``, after entry ``after``)
and, in a platform's subclass, where the reply goes. It is removed once the reply has been
delivered; a later process adopts the records left
(:meth:`adapters.tracked.TrackedClient.adopt_from`).

The records of one adapter (Telegram: one bot; Discord: one adapter id) are the fields of one
hash, each a versioned JSON struct. A record older than ``ttl_s`` (the services pass
``redis.reply_stream_ttl_s``, the life of an idle reply stream) is dropped when the records
are loaded; the hash itself expires ``ttl_s`` after the last record was added.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from bot.redis import Redis

log = logging.getLogger(__name__)

VERSION = 1


class OwedReply(msgspec.Struct, frozen=True, kw_only=True):
    """What every platform keeps about a reply it owes; a platform adds where it goes."""

    v: int = VERSION
    request_id: str
    reply_to: str
    """The adapter id whose reply stream receives the request's events."""
    after: str = "0-0"
    """A reply-stream entry id that every event of the request comes after."""
    conversation: str
    user: str
    created_ms: int = 0
    expires_ms: int = 0


R = TypeVar("R", bound=OwedReply)

_encoder = msgspec.json.Encoder()


def stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a pair that orders as Redis orders ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class OwedReplies(Generic[R]):
    """The records of type ``kind`` in hash ``key``; each kept for at most ``ttl_s``."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        kind: type[R],
        ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.key = key
        self.ttl_s = ttl_s
        self._decoder = msgspec.json.Decoder(kind)
        self._clock = clock

    async def add(self, reply: R) -> None:
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

    async def load(self) -> list[R]:
        """Every reply still owed, oldest first; expired and unreadable records are dropped."""
        raw = await self.redis.hgetall(self.key)
        now_ms = int(self._clock() * 1000)
        kept: list[R] = []
        dropped: list[bytes | str] = []
        for field, data in raw.items():
            try:
                reply = self._decoder.decode(data)
            except msgspec.DecodeError as e:  # not JSON, or not a record of this kind
                log.warning("dropping an unreadable owed reply %r in %s: %s", field, self.key, e)
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
