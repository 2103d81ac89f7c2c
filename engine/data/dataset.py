"""Choosing and loading the data a training run uses, and the train/validation split.

``parley train --data chitchat --data export.json --data archive.jsonl`` names sources; each
spec is ``chitchat`` (the bundled base corpus) or a path whose format is found from its
content (Parley JSONL, a Telegram Desktop ``result.json`` or its export folder, or a
DiscordChatExporter JSON), so users need not say what they exported with.

The split is by conversation, never by message or window: turns of one conversation on both
sides would leak the answers into validation. A conversation's side is a hash of its id (and
the seed), not a shuffle, so retraining on a grown archive keeps every old conversation on the
side it was on, and "better than the live model" compares like with like. Training splits
three ways (train, validation, test: :mod:`engine.quality.splits`, whose hash this uses).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from bot.errors import DataError
from engine.data.chitchat import read_chitchat
from engine.data.conversation import DEFAULT_GAP_S, Conversation
from engine.data.discord import parse_discord
from engine.data.jsonl import decode_document, parse_jsonl_line, read_bytes, read_jsonl
from engine.data.telegram import parse_telegram
from engine.quality.splits import split_three

log = logging.getLogger(__name__)

CHITCHAT_SPEC = "chitchat"
SourceKind = Literal["chitchat", "jsonl", "telegram", "discord"]


def split_conversations(
    conversations: Sequence[Conversation], val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[Conversation], list[Conversation]]:
    """``(train, val)``: each conversation wholly on one side, by a hash of its id.

    The two-way form of :func:`engine.quality.splits.split_three` (no test side), which
    training uses with a test side; see there for the hash and the tiny-data rule.
    """
    sides = split_three(conversations, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    return sides.train, sides.validation


def load_sources(
    specs: Iterable[str],
    *,
    gap_s: float = DEFAULT_GAP_S,
    bot_names: Iterable[str] = (),
    bot_ids: Iterable[str | int] = (),
    opted_out: Iterable[str] = (),
) -> list[Conversation]:
    """All conversations of the given sources, in order, without duplicate ids.

    ``gap_s``, ``bot_names`` and ``bot_ids`` apply to the chat exports (Telegram, Discord);
    ``opted_out`` authors are added to every conversation's opted-out set. A conversation id
    seen before (the same export given twice) is dropped with a warning.
    """
    names, ids, excluded = tuple(bot_names), tuple(bot_ids), frozenset(opted_out)
    conversations: list[Conversation] = []
    seen: set[str] = set()
    for spec in specs:
        loaded = _load_one(spec, gap_s, names, ids)
        duplicates = 0
        for conversation in loaded:
            if conversation.id in seen:
                duplicates += 1
                continue
            seen.add(conversation.id)
            conversations.append(conversation.with_opted_out(excluded))
        if duplicates:
            log.warning("%s: skipped %d conversations already loaded", spec, duplicates)
        log.info("%s: %d conversations", spec, len(loaded) - duplicates)
    return conversations


def _load_one(
    spec: str, gap_s: float, bot_names: tuple[str, ...], bot_ids: tuple[str | int, ...]
) -> list[Conversation]:
    if spec == CHITCHAT_SPEC:
        return read_chitchat()
    path = _resolve(spec)
    if path.suffix.lower() == ".jsonl":
        return read_jsonl(path)
    data = read_bytes(path)
    kind = detect_kind(data, str(path))
    if kind == "telegram":
        return parse_telegram(data, str(path), gap_s=gap_s, bot_names=bot_names, bot_ids=bot_ids)
    if kind == "discord":
        return parse_discord(data, str(path), gap_s=gap_s, bot_names=bot_names, bot_ids=bot_ids)
    return read_jsonl(path)


def _resolve(spec: str) -> Path:
    """The file a spec names: a Telegram export folder means the ``result.json`` inside."""
    path = Path(spec).expanduser()
    if path.is_dir():
        inner = path / "result.json"
        if not inner.is_file():
            raise DataError(spec, None, "a folder, but not a Telegram export (no result.json)")
        return inner
    if not path.exists():
        raise DataError(spec, None, f"no such file (and not {CHITCHAT_SPEC!r})")
    return path


class _Probe(msgspec.Struct):
    """Just the top-level keys that tell the formats apart; values are left unparsed.

    An absent key stays an empty ``Raw`` (msgspec cannot put ``Raw`` in a union with None).
    """

    guild: msgspec.Raw = msgspec.Raw()
    channel: msgspec.Raw = msgspec.Raw()
    messages: msgspec.Raw = msgspec.Raw()
    chats: msgspec.Raw = msgspec.Raw()
    type: msgspec.Raw = msgspec.Raw()
    id: msgspec.Raw = msgspec.Raw()


def detect_kind(data: bytes, path: str) -> SourceKind:
    """Which format a file's bytes are in, or :class:`DataError` saying what was expected.

    A file that is not one JSON document but whose first line is a conversation record is
    JSONL, whatever its name.
    """
    try:
        probe = decode_document(data, _Probe, path)
    except DataError:
        if _first_line_is_record(data, path):
            return "jsonl"
        raise
    if probe.guild and probe.channel and probe.messages:
        return "discord"
    if probe.chats or (probe.messages and probe.type):
        return "telegram"
    if probe.messages and probe.id:
        return "jsonl"  # a JSONL file of one line
    raise DataError(
        path,
        None,
        "not a recognised conversation file (expected Parley JSONL, a Telegram Desktop "
        "result.json, or a DiscordChatExporter JSON export)",
    )


def _first_line_is_record(data: bytes, path: str) -> bool:
    first = next((line for line in data.splitlines() if line.strip()), b"")
    try:
        parse_jsonl_line(first.removeprefix(b"\xef\xbb\xbf"), path)
    except DataError:
        return False
    return True


def describe(conversations: Sequence[Conversation]) -> dict[str, int]:
    """Counts for a log line or provenance record: conversations and messages per source."""
    counts: dict[str, int] = {}
    for c in conversations:
        counts[f"{c.source}.conversations"] = counts.get(f"{c.source}.conversations", 0) + 1
        counts[f"{c.source}.messages"] = counts.get(f"{c.source}.messages", 0) + len(c.messages)
    return counts
