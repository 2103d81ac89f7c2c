"""Every Redis key, stream, group and channel name Parley uses, in one place.

Keys that belong to one shard carry the shard in a hash tag (``{3}``), which a Redis Cluster
would use to keep a shard's keys on one node; Parley itself connects to a single Redis server.
"""

from __future__ import annotations

import zlib

PREFIX = "parley"

ENGINE_GROUP = "engines"
"""Consumer group of engine workers on every request stream."""

LOG_STREAM = f"{PREFIX}:log"
"""Every answered exchange, for the trainer."""

MODELS_CHANNEL = f"{PREFIX}:models"
"""Pub/sub channel announcing a newly published model version."""

LIVE_MODEL = f"{PREFIX}:model:live"
"""String: the model version engines should serve."""

ENGINES = f"{PREFIX}:engines"
"""Hash: worker id -> its latest :class:`bot.wire.Heartbeat` (JSON, :mod:`bot.engines`). A
stopping engine removes its entry; readers take one older than ``HEARTBEAT_FRESH_S`` for dead."""

TRAIN_PROGRESS = f"{PREFIX}:train:progress"
"""String: the latest :class:`bot.wire.JobUpdate` of the running (or last) retrain job,
written by the trainer service and shown on the admin dashboard."""

TRAIN_LOCK = f"{PREFIX}:train:lock"
"""String with TTL (renewed while it runs): the id of the retrain job going now; one job at
a time even if two trainer services were started."""

TRAINER_GROUP = "trainers"
"""Consumer group of trainer services on the log stream and the trainer request stream."""

TRAINER_REQUESTS = f"{PREFIX}:trainer:req"
"""Stream of :data:`bot.wire.TrainerMessage` (retrain, forget, opt-out/in, feedback) for the
trainer service, which may run on another host than the adapters."""


def trainer_replies(request_id: str) -> str:
    """Stream (with TTL): the trainer's answers to one request (:class:`bot.wire.TrainerReply`,
    :class:`bot.wire.JobUpdate`), read by whoever sent it."""
    return f"{PREFIX}:trainer:out:{request_id}"


FIELD = "m"
"""The one field of a request-stream or log-stream entry: the encoded wire message."""

EVENTS_FIELD = "e"
"""The one field of a reply-stream entry: its reply events (:func:`bot.wire.encode_events`),
all that one engine batch has for that adapter — one entry per batch, not one per delta."""


def shard_for(conversation: str, shards: int) -> int:
    """The shard that owns ``conversation``: stable across processes and restarts."""
    return zlib.crc32(conversation.encode()) % shards


def request_stream(shard: int) -> str:
    return f"{PREFIX}:req:{{{shard}}}"


def dead_letter_stream(shard: int) -> str:
    return f"{PREFIX}:dead:{{{shard}}}"


def reply_stream(adapter_id: str) -> str:
    return f"{PREFIX}:out:{adapter_id}"


def history(conversation: str) -> str:
    """List of encoded turns of a conversation, bounded."""
    return f"{PREFIX}:hist:{conversation}"


def state(conversation: str) -> str:
    """Spilled model state of a conversation (bytes, with TTL)."""
    return f"{PREFIX}:state:{conversation}"


def user_conversations(user: str) -> str:
    """Set of conversation keys a user has spoken in (for ``/forget``)."""
    return f"{PREFIX}:user:{user}:convs"


def opted_out() -> str:
    """Set of users who asked to be forgotten and kept out of training."""
    return f"{PREFIX}:optout"


# --- Queue internals (bot/queue) -------------------------------------------------------------

DEAD_REASON_FIELD = "reason"
"""Dead-letter entry field: why the entry was dead-lettered."""

DEAD_ID_FIELD = "id"
"""Dead-letter entry field: the entry's id in its request stream."""

DEAD_DELIVERIES_FIELD = "deliveries"
"""Dead-letter entry field: how often the entry had been delivered."""


def shard_lease(shard: int) -> str:
    """String: id of the engine worker holding ``shard``, with a PX expiry it keeps renewing."""
    return f"{PREFIX}:lease:{{{shard}}}"


LEASE_OWNERS = f"{PREFIX}:lease:workers"
"""Hash: worker id -> time (ms) of its last lease renewal; workers share shards among these."""


# --- Telegram adapter (adapters/telegram) ----------------------------------------------------


def telegram_poller(bot_id: int) -> str:
    """String: id of the adapter polling bot ``bot_id``'s updates, with a PX expiry it keeps
    renewing. One poller per token; other adapters of the same bot wait until it expires."""
    return f"{PREFIX}:tg:{bot_id}:poller"


def telegram_offset(bot_id: int) -> str:
    """String: the next ``getUpdates`` offset of bot ``bot_id`` (last handled update_id + 1).
    Written only after the requests of a batch are in their request streams, so a restart
    resumes where the last poller stopped and an update is never confirmed before it is kept."""
    return f"{PREFIX}:tg:{bot_id}:offset"


def telegram_replied(request_id: str) -> str:
    """String with TTL: set (NX) when the first message of the reply to a Telegram request
    is about to be sent; a redelivered update finding it sends nothing again."""
    return f"{PREFIX}:tg:replied:{request_id}"


def telegram_reply_message(bot_id: int, chat_id: int, message_id: int) -> str:
    """String with TTL: the request id a message of the bot's answers, so a 👍/👎 reaction on
    it becomes feedback on that reply."""
    return f"{PREFIX}:tg:{bot_id}:msg:{chat_id}:{message_id}"


def telegram_refused(bot_id: int, chat_id: int) -> str:
    """String with TTL: the chat outside ``telegram.allowed_chats`` was told so once."""
    return f"{PREFIX}:tg:{bot_id}:refused:{chat_id}"


def telegram_pending(bot_id: int) -> str:
    """Hash with TTL: request id -> JSON :class:`adapters.telegram.pending.PendingReply`, one
    per request of bot ``bot_id`` whose reply is not delivered yet (written after its submit,
    removed after its delivery; the hash's TTL is the reply streams'). An adapter that
    becomes the poller delivers the replies a process that died left here."""
    return f"{PREFIX}:tg:{bot_id}:pending"


# --- Discord adapter (adapters/discord) ------------------------------------------------------


def discord_claim(request_id: str) -> str:
    """String with TTL: set (NX) before a Discord message or interaction is answered; a
    redelivery (a gateway replay after a resume) finding it is not answered again."""
    return f"{PREFIX}:discord:claim:{request_id}"


def discord_chain(message_id: int) -> str:
    """String with TTL: the first user message of the reply chain that bot message
    ``message_id`` belongs to, so a reply to it continues that conversation
    (``discord.context = "reply-chain"``)."""
    return f"{PREFIX}:discord:chain:{message_id}"


def discord_thread(thread_id: int) -> str:
    """String with TTL: the bot has answered in thread ``thread_id``, so it answers every
    message there; renewed on each answer."""
    return f"{PREFIX}:discord:thread:{thread_id}"


def discord_reply_message(message_id: int) -> str:
    """String with TTL: the request id that bot message ``message_id`` answers, so a 👍/👎
    reaction on it becomes feedback on that reply."""
    return f"{PREFIX}:discord:msg:{message_id}"


def discord_reactions(request_id: str) -> str:
    """Sorted set with TTL: the 👍/👎 reactions standing on the messages of the reply to
    ``request_id`` (member ``<value>:<message>:<user>:<emoji>[:super]``, score the time in ms
    it was added); the most recent one is the reply's feedback."""
    return f"{PREFIX}:discord:reactions:{request_id}"


def discord_pending(adapter_id: str) -> str:
    """Hash with TTL: request id -> JSON :class:`adapters.discord.owed.DiscordOwed`, one per
    request of Discord adapter ``adapter_id`` whose reply is not delivered yet (written after
    its submit, removed after its delivery; the hash's TTL is the reply streams'). A process
    with the same adapter id delivers, once connected, the replies a dead one left here."""
    return f"{PREFIX}:discord:pending:{adapter_id}"


def discord_replied(request_id: str) -> str:
    """String with TTL: set (NX) just before the first message of the reply to
    ``request_id`` is posted; a process that finds it set posts nothing (the reply is out,
    or its first post's outcome is unknown), so no reply is posted twice."""
    return f"{PREFIX}:discord:replied:{request_id}"
