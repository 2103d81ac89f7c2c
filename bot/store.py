"""The conversation store: everything Parley keeps in Redis about conversations and users.

One class owns it all — a conversation's history (a bounded list of turns), its spilled model
state (opaque bytes the engine wrote), the index of which conversations a user has spoken in,
``/reset``, ``/forget`` and the opted-out set the trainer reads. The engine worker and the
trainer call it; nothing else touches those keys (:mod:`bot.keys` names them).

Writes that belong to a reply (the exchange's turns, a spilled state) are *queued* into the
caller's pipeline (:meth:`ConversationStore.append_exchange`, :meth:`ConversationStore.spill`)
so they commit in the reply's own transaction: a crash never leaves a stored exchange whose
request is then answered again. Everything else runs its own round trip and translates Redis
failures into :class:`~bot.errors.QueueError`.

Each stored turn carries the id of the message it belongs to, so a regenerated reply (the
safety filter's ``regenerate`` action) replaces the blocked exchange: :meth:`Stored.without`
leaves it out of the prompt, and :meth:`ConversationStore.append_exchange` removes it in the
reply's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bot import keys, wire
from bot.errors import QueueError, WireError
from bot.redis import Redis
from bot.wire import Turn

log = logging.getLogger(__name__)

HISTORY_MAX_TURNS = 200
"""Most turns kept per conversation; older ones are trimmed as new ones arrive."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What the store holds for one conversation: its turns, and its spilled state if any.

    ``entries`` are the turns as stored (with the id of the message each belongs to); two
    ``Stored`` compare by history and state alone."""

    history: tuple[Turn, ...]
    spilled: bytes | None
    entries: tuple[tuple[bytes, wire.StoredTurn], ...] = field(default=(), compare=False)

    def without(self, request_id: str) -> tuple[tuple[Turn, ...], tuple[bytes, ...]]:
        """The history less the turns of ``request_id``'s exchange (a blocked reply being
        regenerated), and those turns as stored (for :meth:`ConversationStore.append_exchange`
        to remove). Nothing is left out when no stored turn carries that id."""
        gone = tuple(raw for raw, turn in self.entries if turn.request_id == request_id)
        if not request_id or not gone:
            return self.history, ()
        kept = tuple(turn.turn for _, turn in self.entries if turn.request_id != request_id)
        return kept, gone


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What :meth:`ConversationStore.forget` deleted."""

    user: str
    conversations: tuple[str, ...]
    """The conversations whose history and state were deleted, sorted."""


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def decode_entries(stored: Sequence[bytes] | None) -> tuple[tuple[bytes, wire.StoredTurn], ...]:
    """Stored turns, decoded, each beside its bytes; an unreadable turn is logged and dropped,
    not fatal."""
    entries = []
    for raw in stored or ():
        try:
            entries.append((raw, wire.decode_stored_turn(raw)))
        except WireError:
            log.warning("dropping an unreadable stored turn")
    return tuple(entries)


def decode_history(stored: Sequence[bytes] | None) -> tuple[Turn, ...]:
    """Stored turns, decoded; an unreadable turn is logged and dropped, not fatal."""
    return tuple(turn.turn for _, turn in decode_entries(stored))


class ConversationStore:
    """History, spilled state, the user index and the opted-out set, over one Redis client.

    ``ttl_s`` is how long a conversation's history, state and its user's index live after
    their last write.
    """

    def __init__(
        self, redis: Redis, *, ttl_s: int, history_max_turns: int = HISTORY_MAX_TURNS
    ) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.history_max_turns = history_max_turns

    # -- reading ----------------------------------------------------------------------

    async def history(self, conversation: str) -> tuple[Turn, ...]:
        """The stored turns of ``conversation``, oldest first (empty when none)."""
        return (await self.load([conversation]))[conversation].history

    async def load(self, conversations: Sequence[str]) -> dict[str, Stored]:
        """History and spilled state of each conversation, in one round trip."""
        if not conversations:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for conv in conversations:
            pipe.lrange(keys.history(conv), 0, -1)
            pipe.get(keys.state(conv))
        results = await self._run(pipe, f"read {len(conversations)} conversation(s)")
        stored = {}
        for i, conv in enumerate(conversations):
            entries = decode_entries(results[2 * i])
            history = tuple(turn.turn for _, turn in entries)
            stored[conv] = Stored(history, results[2 * i + 1], entries)
        return stored

    # -- writes that ride in the caller's transaction ----------------------------------

    def append_exchange(
        self,
        pipe: Pipeline,
        conversation: str,
        user: str,
        user_turn: Turn,
        bot_turn: Turn,
        *,
        request_id: str = "",
        replaces: Sequence[bytes] = (),
    ) -> None:
        """Queue into ``pipe`` one exchange of ``conversation``: both turns (tagged with
        ``request_id``, the message they answer), the history's trim and expiry, and
        ``user``'s index entry (for ``/forget``; skipped when empty). The stored turns in
        ``replaces`` (:meth:`Stored.without`: a blocked exchange this one regenerates) are
        removed first, wherever they are; ones already gone are no error."""
        if user:
            index = keys.user_conversations(user)
            pipe.sadd(index, conversation)
            pipe.expire(index, self.ttl_s)
        key = keys.history(conversation)
        for raw in replaces:
            # Unique: a stored turn carries its role and the id of the message it belongs to.
            pipe.lrem(key, -1, raw)  # type: ignore[arg-type]  # (bytes, as stored)
        pipe.rpush(
            key, wire.encode_turn(user_turn, request_id), wire.encode_turn(bot_turn, request_id)
        )
        pipe.ltrim(key, -self.history_max_turns, -1)
        pipe.expire(key, self.ttl_s)

    def spill(self, pipe: Pipeline, conversation: str, data: bytes) -> None:
        """Queue into ``pipe`` the spilled model state of ``conversation`` (with the TTL)."""
        pipe.set(keys.state(conversation), data, ex=self.ttl_s)

    # -- amend, reset, forget and consent ----------------------------------------------

    async def amend(self, conversation: str, request_id: str, text: str) -> bool:
        """Make the stored reply to message ``request_id`` read ``text``, in its place;
        whether there was one to amend."""
        key = keys.history(conversation)
        stored = await self._call(self.redis.lrange(key, 0, -1), f"read {conversation}")
        old = [
            raw
            for raw, turn in decode_entries(stored)
            if turn.request_id == request_id and turn.role == "bot"
        ]
        if not old:
            return False
        new = wire.encode_turn(Turn("bot", text), request_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.linsert(key, "BEFORE", old[-1], new)  # type: ignore[arg-type]  # (bytes, as stored)
        pipe.lrem(key, -1, old[-1])  # type: ignore[arg-type]
        await self._run(pipe, f"amend {conversation}")
        return True

    async def reset(self, conversation: str) -> None:
        """Delete ``conversation``'s history and spilled state."""
        await self._call(
            self.redis.delete(keys.history(conversation), keys.state(conversation)),
            f"reset {conversation}",
        )

    async def forget(self, user: str, also: Iterable[str] = ()) -> Forgotten:
        """Delete the history and state of every conversation ``user`` spoke in (and of the
        conversations in ``also``), drop their index, and opt them out of training."""
        members: set[Any] = await self._call(
            self.redis.smembers(keys.user_conversations(user)), f"read {user}'s conversations"
        )
        conversations = sorted({_text(m) for m in members} | set(also))
        pipe = self.redis.pipeline(transaction=True)
        for conv in conversations:
            pipe.delete(keys.history(conv), keys.state(conv))
        pipe.delete(keys.user_conversations(user))
        pipe.sadd(keys.opted_out(), user)
        await self._run(pipe, f"forget {user}")
        return Forgotten(user, tuple(conversations))

    async def opt_out(self, user: str) -> None:
        """Keep ``user``'s messages out of training from now on."""
        await self._call(self.redis.sadd(keys.opted_out(), user), f"opt {user} out")

    async def opt_in(self, user: str) -> None:
        """Undo :meth:`opt_out` (and the opt-out that :meth:`forget` records)."""
        await self._call(self.redis.srem(keys.opted_out(), user), f"opt {user} in")

    async def is_opted_out(self, user: str) -> bool:
        found = await self._call(
            self.redis.sismember(keys.opted_out(), user), f"check {user}'s consent"
        )
        return bool(found)

    async def opted_out_users(self) -> list[str]:
        """Every opted-out user, sorted."""
        members: set[Any] = await self._call(
            self.redis.smembers(keys.opted_out()), "read the opted-out users"
        )
        return sorted(_text(m) for m in members)

    async def opted_out_among(self, users: Sequence[str]) -> set[str]:
        """Those of ``users`` who are opted out, in one round trip (the trainer's filter)."""
        if not users:
            return set()
        found: list[Any] = await self._call(
            self.redis.smismember(keys.opted_out(), list(users)), "check consent"
        )
        return {user for user, flag in zip(users, found, strict=True) if flag}

    # -- Redis at the boundary ---------------------------------------------------------

    async def _run(self, pipe: Pipeline, what: str) -> list[Any]:
        try:
            return list(await pipe.execute())
        except (RedisError, OSError) as e:
            raise QueueError(f"could not {what}: {e}") from e

    async def _call(self, command: Any, what: str) -> Any:
        try:
            return await command
        except (RedisError, OSError) as e:
            raise QueueError(f"could not {what}: {e}") from e
