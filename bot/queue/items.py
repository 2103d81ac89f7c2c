"""The engine's units of work on the queue: a :class:`Delivery` in, an :class:`Outgoing` out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.wire import Exchange, ReplyEvent, Request


@dataclass(frozen=True, slots=True)
class Delivery:
    """A request read from shard ``shard``'s stream as entry ``entry_id``, for the
    ``deliveries``-th time (more than 1: another worker took it and did not answer)."""

    shard: int
    entry_id: str
    request: Request
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What to write for one request: reply events for adapter ``reply_to``, optionally the
    exchange for the conversation log, and the delivery to acknowledge (give it together
    with the final event: the request is acknowledged in the same transaction)."""

    events: Sequence[ReplyEvent]
    reply_to: str
    ack: Delivery | None = None
    exchange: Exchange | None = None
