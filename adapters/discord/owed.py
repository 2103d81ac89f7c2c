"""Replies the Discord adapter owes: where each goes, kept in Redis from the submit of its
request until it is delivered (:mod:`adapters.owed`).

A message's request id is claimed once (:meth:`~adapters.discord.state.DiscordState.claim`),
so a message the gateway delivers again is never sent to the engine twice; but once the
request is in a request stream, the engine answers to the reply stream of the process that
submitted it. Should that process die first, the :class:`DiscordOwed` it kept tells a later
process with the same adapter id where the reply goes (the channel, the message it answers)
and where its events are; :mod:`adapters.discord.adopt` delivers it.

:class:`Ledger` keeps the records of one process: :meth:`Ledger.owe` before the submit (the
tracked client stores the record once the request is appended), :meth:`Ledger.settle` after
the delivery. The first message of every reply is posted only if its claim
(:func:`bot.keys.discord_replied`) is new, so a reply that was posted (or whose post's outcome
is unknown) is never posted again.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from adapters.owed import OwedReplies, OwedReply
from adapters.tracked import TrackedClient
from bot import keys
from bot.redis import Redis

log = logging.getLogger(__name__)


class DiscordOwed(OwedReply, frozen=True, kw_only=True):
    """What a later process needs to deliver the reply to one Discord request."""

    channel_id: int
    message_id: int | None = None
    """The user's message the reply answers; ``None`` for a ``/chat`` interaction."""
    chain_root: int | None = None
    """The first user message of the reply chain (``discord.context = "reply-chain"``)."""
    in_thread: bool = False
    """The channel is a thread, which the bot joins by answering there."""


def owed_replies(redis: Redis, adapter_id: str, ttl_s: int) -> OwedReplies[DiscordOwed]:
    """The records of adapter ``adapter_id`` (:func:`bot.keys.discord_pending`)."""
    return OwedReplies(redis, keys.discord_pending(adapter_id), DiscordOwed, ttl_s)


class Ledger:
    """The replies one process owes, and the ones it is delivering now."""

    def __init__(self, client: TrackedClient, pending: OwedReplies[DiscordOwed]) -> None:
        self.client = client
        self.pending = pending
        self.in_flight: set[str] = set()
        """Request ids whose replies are being delivered here; adoption leaves them alone."""

    def owe(self, record: DiscordOwed) -> None:
        """The reply to ``record.request_id`` is being delivered here; keep ``record`` once its
        request is appended (an adopted one, in flight already, is kept already)."""
        if record.request_id in self.in_flight:
            return
        self.in_flight.add(record.request_id)
        self.client.watch(record.request_id, record=record)

    async def settle(self, request_id: str, *, delivered: bool) -> None:
        """The reply to ``request_id`` no longer streams here; forget its record if it was
        ``delivered`` (else a later process delivers it, or finds it claimed)."""
        self.in_flight.discard(request_id)
        if not delivered:
            return
        try:
            await self.pending.remove(request_id)
        except (RedisError, OSError) as e:  # adopted later, the claim keeps it from a resend
            log.warning("discord: could not mark the reply to %s delivered: %s", request_id, e)
