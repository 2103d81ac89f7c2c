"""Engine workers as the rest of Parley sees them: their heartbeats in Redis.

Each engine writes a :class:`~bot.wire.Heartbeat` into the Redis hash :data:`bot.keys.ENGINES`
(worker id -> heartbeat) with :func:`publish_heartbeat` and removes it when it stops;
:func:`read_heartbeats` is the one reader, shared by the web adapter's ``/readyz``, the admin
dashboard and the chat commands' ``/status``.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from bot import keys, wire
from bot.errors import QueueError, WireError
from bot.redis import Redis
from bot.wire import HEARTBEAT_FRESH_S, Heartbeat

__all__ = [
    "HEARTBEAT_FRESH_S",
    "Heartbeat",
    "clear_heartbeat",
    "publish_heartbeat",
    "read_heartbeats",
]

log = logging.getLogger(__name__)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def publish_heartbeat(redis: Redis, beat: Heartbeat) -> None:
    """Write ``beat`` as its worker's entry; :class:`QueueError` when Redis fails."""
    try:
        await redis.hset(keys.ENGINES, beat.worker, wire.encode_heartbeat(beat))
    except (RedisError, OSError) as e:
        raise QueueError(f"cannot write the heartbeat of engine {beat.worker}: {e}") from e


async def clear_heartbeat(redis: Redis, worker: str) -> None:
    """Remove ``worker``'s entry (it stopped); :class:`QueueError` when Redis fails."""
    try:
        await redis.hdel(keys.ENGINES, worker)
    except (RedisError, OSError) as e:
        raise QueueError(f"cannot remove the heartbeat of engine {worker}: {e}") from e


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
            beats.append(wire.decode_heartbeat(value))
        except WireError as e:
            log.warning("unreadable heartbeat of engine %s: %s", _text(worker), e)
    return sorted(beats, key=lambda b: b.worker)
