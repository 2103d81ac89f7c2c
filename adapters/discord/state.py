"""The Discord adapter's own state in Redis: answered requests, reply chains, joined threads,
and the replies that reactions are feedback on.

Kept in Redis rather than in the process so that a restarted adapter, or a second one, agrees:

- a request id is *claimed* once (``SET NX``) before it is answered, so a message or
  interaction the gateway delivers twice (a resume replay) is answered once; its reply is
  claimed again just before its first message is posted, so a process delivering a reply
  another one left owed (:mod:`adapters.discord.owed`) never posts it twice;
- each bot message of a reply chain points at the chain's first user message, so a reply to
  any of them continues the same conversation (``context = "reply-chain"``);
- a thread the bot has answered in is *joined*: it answers every message there afterwards;
- each bot message of a finished reply points at the request it answers, and the 👍/👎
  reactions standing on a reply's messages are kept with the time each was added, so the
  reply's feedback is the most recent one still there.

The key names are in :mod:`bot.keys` (``discord_*``).
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.exceptions import RedisError

from adapters.discord.policy import Reaction
from bot import keys
from bot.errors import QueueError
from bot.redis import Redis

CLAIM_TTL_S = 24 * 3600
"""How long a request id stays claimed; Discord redelivers within minutes at most."""
CHAIN_TTL_S = 7 * 24 * 3600
THREAD_TTL_S = 7 * 24 * 3600
"""A joined thread is left after this long without the bot answering there."""
REPLY_TTL_S = 30 * 24 * 3600
"""How long a reaction on a reply still counts as feedback."""


class DiscordState:
    """Reads and writes the adapter's keys; Redis failures become :class:`QueueError`."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def claim(self, request_id: str) -> bool:
        """True the first time ``request_id`` is claimed, false for every redelivery."""
        key = keys.discord_claim(request_id)
        try:
            return bool(await self.redis.set(key, b"1", nx=True, ex=CLAIM_TTL_S))
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot claim {request_id}: {e}") from e

    async def claim_reply(self, request_id: str) -> bool:
        """True the first time the reply to ``request_id`` is about to be posted."""
        key = keys.discord_replied(request_id)
        try:
            return bool(await self.redis.set(key, b"1", nx=True, ex=CLAIM_TTL_S))
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot claim the reply to {request_id}: {e}") from e

    async def chain_root(self, message_id: int) -> int | None:
        """The first user message of the chain bot message ``message_id`` belongs to."""
        try:
            value = await self.redis.get(keys.discord_chain(message_id))
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot read reply chain of {message_id}: {e}") from e
        return int(value) if value is not None else None

    async def extend_chain(self, message_ids: Iterable[int], root: int) -> None:
        """Record that the bot messages ``message_ids`` continue the chain started at ``root``."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for message_id in message_ids:
                    pipe.set(keys.discord_chain(message_id), str(root), ex=CHAIN_TTL_S)
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot record reply chain {root}: {e}") from e

    async def join_thread(self, thread_id: int) -> None:
        try:
            await self.redis.set(keys.discord_thread(thread_id), b"1", ex=THREAD_TTL_S)
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot join thread {thread_id}: {e}") from e

    async def joined_thread(self, thread_id: int) -> bool:
        try:
            return bool(await self.redis.exists(keys.discord_thread(thread_id)))
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot read thread {thread_id}: {e}") from e

    # -- reactions as feedback -----------------------------------------------------------------

    async def remember_reply(self, message_ids: Iterable[int], request_id: str) -> None:
        """Record that the bot messages ``message_ids`` are the reply to ``request_id``."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for message_id in message_ids:
                    key = keys.discord_reply_message(message_id)
                    pipe.set(key, request_id, ex=REPLY_TTL_S)
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot remember the messages of reply {request_id}: {e}") from e

    async def reply_of(self, message_id: int) -> str | None:
        """The request id bot message ``message_id`` answers; ``None`` for any other message
        (or one whose reply is older than :data:`REPLY_TTL_S`)."""
        try:
            value = await self.redis.get(keys.discord_reply_message(message_id))
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot look up message {message_id}: {e}") from e
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def react(self, request_id: str, reaction: Reaction, *, at_ms: int) -> int | None:
        """Count ``reaction`` (put on, or taken off, a message of the reply to ``request_id``)
        and return the reply's feedback afterwards: the value of the most recent reaction
        still there, ``0`` when none is. ``None`` when nothing changed: an add seen before (a
        replayed event), or the removal of a reaction that was never counted (a bot's)."""
        key = keys.discord_reactions(request_id)
        member = _member(reaction)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                if reaction.added:
                    pipe.zadd(key, {member: at_ms}, nx=True)
                else:
                    pipe.zrem(key, member)
                pipe.zrange(key, 0, 0, desc=True)
                pipe.expire(key, REPLY_TTL_S)
                changed, latest, _ = await pipe.execute()
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot record a reaction on reply {request_id}: {e}") from e
        if not changed:
            return None
        if not latest:
            return 0
        top = latest[0].decode() if isinstance(latest[0], bytes) else str(latest[0])
        return int(top.split(":", 1)[0])


def _member(reaction: Reaction) -> str:
    """``<value>:<message>:<user>:<emoji>[:super]``: who put which reaction on which message,
    the same for its add and its removal; the value first, for :meth:`DiscordState.react`."""
    kind = ":super" if reaction.super_reaction else ""
    return f"{reaction.value:+d}:{reaction.message_id}:{reaction.user_id}:{reaction.emoji}{kind}"
