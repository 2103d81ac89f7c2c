"""Engine workers as the rest of Parley sees them: their heartbeats in Redis.

Engines write heartbeats into the Redis hash :data:`bot.keys.ENGINES` (worker id -> JSON);
:func:`read_heartbeats` is the one reader, shared by the web adapter's ``/readyz``, the admin
dashboard and the chat commands' ``/status``.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from redis.exceptions import RedisError

from bot import keys
from bot.errors import QueueError
from bot.redis import Redis

log = logging.getLogger(__name__)

HEARTBEAT_FRESH_S = 10.0
"""An engine whose last heartbeat is older than this is taken for dead."""


class Heartbeat(msgspec.Struct, frozen=True):
    """One engine worker's last report (see :data:`bot.keys.ENGINES`)."""

    worker: str
    time: float
    model_version: str = ""
    running: int = 0
    waiting: int = 0
    tokens_per_s: float = 0.0
    tokens_generated: int | None = None
    """A running total; the dashboard derives tokens/s from it when ``tokens_per_s`` is 0."""
    cache_hits: int = 0
    cache_queries: int = 0

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.time)

    def alive(self, now: float) -> bool:
        return self.age_s(now) < HEARTBEAT_FRESH_S


_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def read_heartbeats(redis: Redis) -> list[Heartbeat]:
    """Every engine's last heartbeat (alive or not), sorted by worker id.

    Entries that do not parse are logged and skipped; Redis failing raises :class:`QueueError`.
    """
    try:
        raw: dict[Any, Any] = await redis.hgetall(keys.ENGINES)
    except (RedisError, OSError) as e:
        raise QueueError(f"cannot read engine heartbeats: {e}") from e
    beats = []
    for worker, value in raw.items():
        try:
            beats.append(_heartbeat_decoder.decode(value))
        except msgspec.DecodeError as e:
            log.warning("unreadable heartbeat of engine %s: %s", _text(worker), e)
    return sorted(beats, key=lambda b: b.worker)
