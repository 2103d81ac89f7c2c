"""Parley's own conversation file: JSON Lines, one conversation per line.

This is the format the learning-loop archive exports and ``parley train --data`` reads, so a
hand-written or scripted dataset can join the same pipeline. One line is one JSON object::

    {"id": "discord:123:456", "source": "discord",
     "messages": [{"author": "42", "text": "hi", "bot": false, "ts": "2024-05-01T10:00:00Z"},
                  {"author": "parley", "text": "hello!", "bot": true, "ts": null}],
     "opted_out": ["77"]}

(written on one line in the file). Fields:

- ``id`` (string, required): stable across exports; the train/validation split hashes it.
- ``messages`` (array, required): in order; each has ``author`` and ``text`` (strings,
  required), ``bot`` (bool, default ``false``) and ``ts`` (ISO 8601 string or ``null``).
- ``source`` (string, default ``"jsonl"``): where the conversation came from.
- ``opted_out`` (array of author strings, default empty): authors never used for training.

Unknown keys are ignored (newer writers may add some). Files are UTF-8; blank lines are
skipped; any other line that is not a valid record raises :class:`~bot.errors.DataError`
naming the file and line, because silently dropping part of a dataset hides data loss.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import msgspec

from bot.errors import DataError
from engine.data.conversation import Conversation, Message

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "jsonl"
_UTF8_BOM = b"\xef\xbb\xbf"
_S = TypeVar("_S")


class _MessageRecord(msgspec.Struct, forbid_unknown_fields=False):
    author: str
    text: str
    bot: bool = False
    ts: str | None = None


class _ConversationRecord(msgspec.Struct, forbid_unknown_fields=False):
    id: str
    messages: list[_MessageRecord]
    source: str = DEFAULT_SOURCE
    opted_out: list[str] = []


_decoder = msgspec.json.Decoder(_ConversationRecord)
_encoder = msgspec.json.Encoder()


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[Conversation]:
    """Yield the conversations of a JSONL file in file order, streaming line by line.

    Raises :class:`DataError` (file and line) at the first bad line; a consumer that must not
    act on a partial file should use :func:`read_jsonl`.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.strip().removeprefix(_UTF8_BOM) if lineno == 1 else raw.strip()
                if line:
                    yield _decode_line(line, name, lineno)
    except OSError as e:
        raise DataError(name, None, f"cannot read: {e.strerror or e}") from e


def read_jsonl(path: str | os.PathLike[str]) -> list[Conversation]:
    """All conversations of a JSONL file, or :class:`DataError` if any line is bad."""
    conversations = list(iter_jsonl(path))
    if not conversations:
        log.warning("%s holds no conversations", os.fspath(path))
    return conversations


def parse_jsonl_line(line: bytes | str, path: str = "<string>", lineno: int = 1) -> Conversation:
    """Decode one JSONL record (used by format detection on a single-line file)."""
    data = line.encode() if isinstance(line, str) else line
    return _decode_line(data.strip(), path, lineno)


def _decode_line(line: bytes, path: str, lineno: int) -> Conversation:
    try:
        record = _decoder.decode(line)
    except msgspec.ValidationError as e:
        raise DataError(path, lineno, f"invalid conversation record: {e}") from e
    except msgspec.DecodeError as e:
        raise DataError(path, lineno, f"invalid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise DataError(path, lineno, f"not UTF-8: {e.reason} at byte {e.start}") from e
    if not record.id:
        raise DataError(path, lineno, "conversation id is empty")
    messages = tuple(Message(m.author, m.text, m.bot, m.ts) for m in record.messages)
    return Conversation(record.id, messages, record.source, frozenset(record.opted_out))


def encode_conversation(conversation: Conversation) -> bytes:
    """One conversation as a JSONL line (no trailing newline), UTF-8, non-ASCII kept as is."""
    record: dict[str, object] = {
        "id": conversation.id,
        "source": conversation.source,
        "messages": [
            {"author": m.author, "text": m.text, "bot": m.is_bot, "ts": m.timestamp}
            for m in conversation.messages
        ],
    }
    if conversation.opted_out_authors:
        record["opted_out"] = sorted(conversation.opted_out_authors)
    return _encoder.encode(record)


def write_jsonl(path: str | os.PathLike[str], conversations: Iterable[Conversation]) -> int:
    """Write ``conversations`` to ``path`` as JSONL and return how many were written.

    The file is written beside its final name and renamed into place, so a crash mid-export
    never leaves a truncated archive that a later training run would read as complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for conversation in conversations:
                f.write(encode_conversation(conversation))
                f.write(b"\n")
                count += 1
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %d conversations to %s", count, target)
    return count


# --- JSON documents, shared by the export readers (Telegram, Discord) -----------------------


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, with I/O errors turned into :class:`DataError` naming the file."""
    name = os.fspath(path)
    try:
        return Path(name).read_bytes()
    except OSError as e:
        raise DataError(name, None, f"cannot read: {e.strerror or e}") from e


def decode_document(data: bytes, schema: type[_S], path: str) -> _S:
    """Decode a whole JSON document into ``schema`` (a msgspec type), or raise DataError.

    A syntax error names the line (found by re-parsing with the standard library, which
    tracks lines; only on the error path, so good files are parsed once, fast); a wrong type
    names the JSON path of the bad value (``$.messages[3].text``).
    """
    try:
        return msgspec.json.decode(data.removeprefix(_UTF8_BOM), type=schema)
    except msgspec.ValidationError as e:
        raise DataError(path, None, f"unexpected content: {e}") from e
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8: {e.reason} at byte {e.start}") from e
    except msgspec.DecodeError as e:
        lineno, reason = _locate_syntax_error(data)
        raise DataError(path, lineno, reason or f"invalid JSON: {e}") from e


def _locate_syntax_error(data: bytes) -> tuple[int | None, str | None]:
    try:
        json.loads(data.decode("utf-8", errors="replace").removeprefix("\ufeff"))
    except json.JSONDecodeError as e:
        return e.lineno, f"invalid JSON (truncated or malformed): {e.msg} at column {e.colno}"
    return None, None
