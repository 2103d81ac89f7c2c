"""Every Redis key, stream, group and channel name Parley uses, in one place.

Keys that belong to one shard carry the shard in a hash tag (``{3}``) so a Redis Cluster
keeps a shard's streams on one node.
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
"""Hash: worker id -> JSON heartbeat (model version, time); entries expire by their time."""

STATS = f"{PREFIX}:stats"
"""Hash of engine counters shown on the dashboard."""

TRAIN_PROGRESS = f"{PREFIX}:train:progress"
"""String: JSON progress report of the running (or last) training run, written by the trainer
and shown on the admin dashboard (e.g. ``{"status", "step", "steps", "loss", "val_loss"}``)."""

TRAIN_LOCK = f"{PREFIX}:train:lock"
"""String with TTL: held while a retraining run started from the dashboard is going."""

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
