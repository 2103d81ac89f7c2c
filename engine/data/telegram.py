"""Telegram Desktop's JSON chat export (``result.json``) as conversations.

Telegram Desktop writes two shapes (Settings → Advanced → Export, format JSON):

- one chat ("Export chat history"): ``{"name", "type", "id", "messages": [...]}``;
- the whole account ("Export Telegram data"): ``{"chats": {"list": [chat, ...]},
  "left_chats": {"list": [...]}, ...}`` where each chat has the shape above. From a whole-
  account export, saved messages and broadcast channels are skipped: they are notes and
  announcements, not people talking to each other.

A message is ``{"id", "type": "message" | "service", "date", "date_unixtime", "from",
"from_id", "text", "text_entities", ...}``. ``text`` is a string, or a list mixing strings
and entity objects ``{"type": "bold" | "link" | "mention" | ..., "text": ...}`` whose texts
concatenate to the message. Kept: ``type == "message"`` with non-empty text (a media caption
counts). Skipped: service messages (joins, pins, calls), stickers and media without caption,
and forwarded messages (someone else's words, often channel posts).

A chat is one endless stream, so it is cut into conversations at silences longer than
``gap_s``. The bot's own messages are marked only when the author is in ``bot_names`` (the
display name, case-insensitive) or ``bot_ids`` (``from_id``; ``"user123"`` or ``"123"``):
``via_bot`` messages and names ending in "bot" are people using a bot, not the bot talking.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import msgspec

from bot.errors import DataError
from engine.data.conversation import DEFAULT_GAP_S, Conversation, Message, split_by_gap
from engine.data.jsonl import decode_document, read_bytes

log = logging.getLogger(__name__)

SOURCE = "telegram"
SKIPPED_CHAT_TYPES = frozenset({"saved_messages", "public_channel", "private_channel"})
"""Chat types left out of a whole-account export (see the module docstring)."""


class _Entity(msgspec.Struct):
    text: str = ""
    type: str = ""


_Text = str | list[str | _Entity]


class _Message(msgspec.Struct):
    id: int
    type: str = "message"
    date: str = ""
    date_unixtime: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    from_id: str | None = None
    text: _Text = ""
    text_entities: list[_Entity] = []
    forwarded_from: str | msgspec.UnsetType | None = msgspec.UNSET


class _Chat(msgspec.Struct):
    id: int | None = None
    name: str | None = None
    type: str = ""
    messages: list[_Message] = []


class _ChatList(msgspec.Struct):
    chats: list[_Chat] = msgspec.field(default_factory=list, name="list")


class _Export(msgspec.Struct):
    """Either shape: a single chat's fields, or the whole account's chat lists."""

    id: int | None = None
    name: str | None = None
    type: str = ""
    messages: list[_Message] | None = None
    chats: _ChatList | None = None
    left_chats: _ChatList | None = None


def read_telegram(
    path: str | os.PathLike[str],
    *,
    gap_s: float = DEFAULT_GAP_S,
    bot_names: Iterable[str] = (),
    bot_ids: Iterable[str | int] = (),
) -> list[Conversation]:
    """The conversations of a Telegram Desktop ``result.json``, or :class:`DataError`."""
    name = os.fspath(path)
    return parse_telegram(read_bytes(name), name, gap_s=gap_s, bot_names=bot_names, bot_ids=bot_ids)


def parse_telegram(
    data: bytes,
    path: str,
    *,
    gap_s: float = DEFAULT_GAP_S,
    bot_names: Iterable[str] = (),
    bot_ids: Iterable[str | int] = (),
) -> list[Conversation]:
    """Like :func:`read_telegram` for bytes already read (``path`` is for error messages)."""
    export = decode_document(data, _Export, path)
    names = frozenset(n.casefold() for n in bot_names)
    ids = frozenset(_normalise_id(i) for i in bot_ids)
    conversations: list[Conversation] = []
    for chat in _chats(export, path):
        conversations.extend(_chat_conversations(chat, path, gap_s, names, ids))
    if not conversations:
        log.warning("%s: no text messages found in the Telegram export", path)
    return conversations


def _chats(export: _Export, path: str) -> list[_Chat]:
    if export.messages is not None:
        return [_Chat(export.id, export.name, export.type, export.messages)]
    if export.chats is None and export.left_chats is None:
        raise DataError(path, None, "not a Telegram export: no 'messages' and no 'chats'")
    chats: list[_Chat] = []
    for chat_list in (export.chats, export.left_chats):
        for chat in chat_list.chats if chat_list is not None else []:
            if chat.type in SKIPPED_CHAT_TYPES:
                log.info("%s: skipping %s chat %r", path, chat.type, chat.name)
            else:
                chats.append(chat)
    return chats


def _chat_conversations(
    chat: _Chat, path: str, gap_s: float, bot_names: frozenset[str], bot_ids: frozenset[str]
) -> list[Conversation]:
    chat_key = str(chat.id) if chat.id is not None else (chat.name or "unknown")
    timed: list[tuple[float, tuple[int, Message]]] = []
    for index, m in enumerate(chat.messages):
        if m.type != "message" or m.forwarded_from is not msgspec.UNSET:
            continue
        text = _message_text(m.text) or _message_text(m.text_entities)
        if not text.strip():
            continue  # a sticker, photo or poll without a caption
        unix_s = _unix_time(m, path, chat_key, index)
        is_bot = (m.from_id or "") in bot_ids or (m.from_ or "").casefold() in bot_names
        author = m.from_id or m.from_ or "unknown"
        iso = datetime.fromtimestamp(unix_s, UTC).isoformat() if m.date_unixtime else m.date
        timed.append((unix_s, (m.id, Message(author, text, is_bot, iso))))
    return [
        Conversation(
            id=f"{SOURCE}:{chat_key}:{run[0][0]}",
            messages=tuple(message for _, message in run),
            source=SOURCE,
        )
        for run in split_by_gap(timed, gap_s)
    ]


def _message_text(text: str | Sequence[str | _Entity]) -> str:
    """A message's plain text: a string as is, or a list's parts and entity texts joined."""
    if isinstance(text, str):
        return text
    return "".join(part if isinstance(part, str) else part.text for part in text)


def _unix_time(m: _Message, path: str, chat_key: str, index: int) -> float:
    try:
        if m.date_unixtime:
            return float(int(m.date_unixtime))
        # Older exports have only the local-time "date"; gaps between two local times
        # are still right (apart from a daylight-saving change inside a gap).
        return datetime.fromisoformat(m.date).replace(tzinfo=UTC).timestamp()
    except ValueError as e:
        raise DataError(
            path, None, f"chat {chat_key} messages[{index}]: bad date {m.date!r}: {e}"
        ) from e


def _normalise_id(bot_id: str | int) -> str:
    """``123`` and ``"123"`` mean the export's ``"user123"``; anything else is taken as is."""
    text = str(bot_id).strip()
    return f"user{text}" if text.isdigit() else text
