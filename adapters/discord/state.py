"""The Discord adapter's own state in Redis: answered requests, reply chains, joined threads.

Kept in Redis rather than in the process so that a restarted adapter, or a second one, agrees:

- a request id is *claimed* once (``SET NX``) before it is answered, so a message or
  interaction the gateway delivers twice (a resume replay) is answered once;
- each bot message of a reply chain points at the chain's first user message, so a reply to
  any of them continues the same conversation (``context = "reply-chain"``);
- a thread the bot has answered in is *joined*: it answers every message there afterwards.

Key names (all under :data:`bot.keys.PREFIX`) are the functions below.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.exceptions import RedisError

from bot import keys
from bot.errors import QueueError
from bot.redis import Redis

CLAIM_TTL_S = 24 * 3600
"""How long a request id stays claimed; Discord redelivers within minutes at most."""
CHAIN_TTL_S = 7 * 24 * 3600
THREAD_TTL_S = 7 * 24 * 3600
"""A joined thread is left after this long without the bot answering there."""


def claim_key(request_id: str) -> str:
    return f"{keys.PREFIX}:discord:claim:{request_id}"


def chain_key(message_id: int) -> str:
    return f"{keys.PREFIX}:discord:chain:{message_id}"


def thread_key(thread_id: int) -> str:
    return f"{keys.PREFIX}:discord:thread:{thread_id}"


class DiscordState:
    """Reads and writes the adapter's keys; Redis failures become :class:`QueueError`."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def claim(self, request_id: str) -> bool:
        """True the first time ``request_id`` is claimed, false for every redelivery."""
        try:
            return bool(await self.redis.set(claim_key(request_id), b"1", nx=True, ex=CLAIM_TTL_S))
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot claim {request_id}: {e}") from e

    async def chain_root(self, message_id: int) -> int | None:
        """The first user message of the chain bot message ``message_id`` belongs to."""
        try:
            value = await self.redis.get(chain_key(message_id))
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot read reply chain of {message_id}: {e}") from e
        return int(value) if value is not None else None

    async def extend_chain(self, message_ids: Iterable[int], root: int) -> None:
        """Record that the bot messages ``message_ids`` continue the chain started at ``root``."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for message_id in message_ids:
                    pipe.set(chain_key(message_id), str(root), ex=CHAIN_TTL_S)
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot record reply chain {root}: {e}") from e

    async def join_thread(self, thread_id: int) -> None:
        try:
            await self.redis.set(thread_key(thread_id), b"1", ex=THREAD_TTL_S)
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot join thread {thread_id}: {e}") from e

    async def joined_thread(self, thread_id: int) -> bool:
        try:
            return bool(await self.redis.exists(thread_key(thread_id)))
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot read thread {thread_id}: {e}") from e
