"""The conversation model every reader produces and every consumer (formatting, split) reads.

A :class:`Conversation` is one stretch of talk: an ordered tuple of :class:`Message` with a
stable ``id``. The id must not change when the same data is loaded again (or re-exported with
newer messages appended), because the train/validation split hashes it; readers build it from
the platform's own ids (``telegram:<chat>:<first message id>``).

``Message.author`` is the platform's stable user id, not a display name: names change, and
opt-outs (``/forget``) are recorded by id. ``opted_out_authors`` lists authors whose messages
must never reach training; it travels with the conversation so no consumer can forget it.

Platform exports are endless streams (a group chat never "ends"), so :func:`split_by_gap`
cuts them into conversations wherever nobody spoke for a while.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

DEFAULT_GAP_S = 3600.0
"""Silence after which a chat stream starts a new conversation (one hour)."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Message:
    """One message: who wrote it, what it said, and whether a bot wrote it."""

    author: str
    text: str
    is_bot: bool = False
    timestamp: str | None = None
    """ISO 8601 as the source gave it (informational; ordering is the tuple's order)."""


@dataclass(frozen=True, slots=True)
class Conversation:
    """An ordered run of messages with an id that stays the same across loads."""

    id: str
    messages: tuple[Message, ...]
    source: str
    """Where it came from: ``chitchat``, ``telegram``, ``discord``, or a JSONL file's own."""
    opted_out_authors: frozenset[str] = frozenset()
    """Authors whose messages are excluded from training, always."""

    def with_opted_out(self, authors: Iterable[str]) -> Conversation:
        """This conversation with ``authors`` added to its opted-out set."""
        extra = frozenset(authors)
        if extra <= self.opted_out_authors:
            return self
        return dataclasses.replace(self, opted_out_authors=self.opted_out_authors | extra)


def split_by_gap(items: Iterable[tuple[float, _T]], gap_s: float) -> Iterator[list[_T]]:
    """Group ``(unix time, item)`` pairs into runs separated by more than ``gap_s`` of silence.

    Items are sorted by time first (stable, so ties keep their order): some exporters can
    write newest-first, and a gap is only meaningful in time order.
    """
    if gap_s <= 0:
        raise ValueError(f"gap_s must be positive, got {gap_s}")
    run: list[_T] = []
    last: float | None = None
    for t, item in sorted(items, key=lambda pair: pair[0]):
        if last is not None and t - last > gap_s and run:
            yield run
            run = []
        run.append(item)
        last = t
    if run:
        yield run
