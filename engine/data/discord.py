"""DiscordChatExporter's JSON export (one channel per file) as conversations.

DiscordChatExporter (``DiscordChatExporter.Cli export -f Json``) writes::

    {"guild": {"id", "name", ...}, "channel": {"id", "type", "name", ...},
     "dateRange": {...}, "exportedAt": "...",
     "messages": [{"id", "type": "Default" | "Reply" | "GuildMemberJoin" | ...,
                   "timestamp": "2024-05-01T10:00:00.123+00:00", "content": "...",
                   "author": {"id", "name", "nickname", "isBot", ...},
                   "attachments": [...], "reference": {...}, ...}],
     "messageCount": N}

Kept: ``Default`` and ``Reply`` messages with non-empty ``content``. Skipped: system
notifications (joins, pins, thread creation: their content is exporter-written boilerplate)
and messages that are only attachments, embeds or stickers. ``is_bot`` is the author's
``isBot`` (any bot account, Parley's or another's), or an author named in ``bot_ids`` /
``bot_names`` (for a bot relayed through a webhook or a user account).

A channel is one endless stream, so it is cut into conversations at silences longer than
``gap_s``. Authors are Discord user ids (snowflakes), which survive renames.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec

from bot.errors import DataError
from engine.data.conversation import DEFAULT_GAP_S, Conversation, Message, split_by_gap
from engine.data.jsonl import decode_document, read_bytes

log = logging.getLogger(__name__)

SOURCE = "discord"
KEPT_MESSAGE_TYPES = frozenset({"Default", "Reply"})


class _Author(msgspec.Struct, rename="camel"):
    id: str
    name: str = ""
    nickname: str | None = None
    is_bot: bool = False


class _Message(msgspec.Struct):
    id: str
    timestamp: str
    author: _Author
    type: str = "Default"
    content: str = ""


class _Channel(msgspec.Struct):
    id: str
    name: str = ""


class _Guild(msgspec.Struct):
    id: str = ""
    name: str = ""


class _Export(msgspec.Struct):
    guild: _Guild
    channel: _Channel
    messages: list[_Message]


def read_discord(
    path: str | os.PathLike[str],
    *,
    gap_s: float = DEFAULT_GAP_S,
    bot_names: Iterable[str] = (),
    bot_ids: Iterable[str | int] = (),
) -> list[Conversation]:
    """The conversations of a DiscordChatExporter JSON file, or :class:`DataError`."""
    name = os.fspath(path)
    return parse_discord(read_bytes(name), name, gap_s=gap_s, bot_names=bot_names, bot_ids=bot_ids)


def parse_discord(
    data: bytes,
    path: str,
    *,
    gap_s: float = DEFAULT_GAP_S,
    bot_names: Iterable[str] = (),
    bot_ids: Iterable[str | int] = (),
) -> list[Conversation]:
    """Like :func:`read_discord` for bytes already read (``path`` is for error messages)."""
    export = decode_document(data, _Export, path)
    names = frozenset(n.casefold() for n in bot_names)
    ids = frozenset(str(i).strip() for i in bot_ids)
    timed: list[tuple[float, tuple[str, Message]]] = []
    for index, m in enumerate(export.messages):
        if m.type not in KEPT_MESSAGE_TYPES or not m.content.strip():
            continue
        is_bot = m.author.is_bot or m.author.id in ids or _is_named(m.author, names)
        message = Message(m.author.id, m.content, is_bot, m.timestamp)
        timed.append((_unix_time(m.timestamp, path, index), (m.id, message)))
    conversations = [
        Conversation(
            id=f"{SOURCE}:{export.channel.id}:{run[0][0]}",
            messages=tuple(message for _, message in run),
            source=SOURCE,
        )
        for run in split_by_gap(timed, gap_s)
    ]
    if not conversations:
        log.warning("%s: no text messages found in the Discord export", path)
    return conversations


def _is_named(author: _Author, names: frozenset[str]) -> bool:
    return author.name.casefold() in names or (author.nickname or "").casefold() in names


def _unix_time(timestamp: str, path: str, index: int) -> float:
    try:
        when = datetime.fromisoformat(timestamp)
    except ValueError as e:
        raise DataError(path, None, f"messages[{index}]: bad timestamp {timestamp!r}") from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # exported with --utc by older versions: no offset
    return when.timestamp()
