"""The Chit-Chat Challenge corpus shipped by the ``chitchat_dataset`` package.

A base corpus of 7,168 English two-person chats, so a fresh install has something to learn
conversation from before the community's own logs exist. The package bundles one JSON file,
``dataset.json``::

    {"<conversation uuid>": {"messages": [[{"text", "sender", "timestamp"}, ...], ...],
                             "start": "...", "prompt": "...", "ratings": {...}}, ...}

where each inner list is one turn: consecutive utterances by the same sender. We read that
file directly (not the package's iterator classes, which drop the senders and re-read the
file per instance). Conversations come out sorted by uuid so the order never depends on the
file's key order.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import msgspec

from bot.errors import DataError
from engine.data.conversation import Conversation, Message
from engine.data.jsonl import decode_document, read_bytes

log = logging.getLogger(__name__)

SOURCE = "chitchat"
PACKAGE = "chitchat_dataset"


class _Utterance(msgspec.Struct):
    text: str
    sender: str
    timestamp: str | None = None


class _Chat(msgspec.Struct):
    messages: list[list[_Utterance]]


def bundled_path() -> Path:
    """Where the installed ``chitchat_dataset`` package keeps ``dataset.json``.

    Found without importing the package: only its data file is needed.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            SOURCE, None, f"the {PACKAGE} package is not installed (pip install chitchat-dataset)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "dataset.json"


def read_chitchat(path: str | os.PathLike[str] | None = None) -> list[Conversation]:
    """All conversations of the corpus (or of a file in its format at ``path``)."""
    name = os.fspath(path) if path is not None else str(bundled_path())
    chats = decode_document(read_bytes(name), dict[str, _Chat], name)
    conversations = [
        Conversation(f"{SOURCE}:{uuid}", _messages(chats[uuid]), SOURCE) for uuid in sorted(chats)
    ]
    log.info("loaded %d chitchat conversations from %s", len(conversations), name)
    return conversations


def _messages(chat: _Chat) -> tuple[Message, ...]:
    return tuple(
        Message(u.sender, u.text, False, u.timestamp)
        for turn in chat.messages
        for u in turn
        if u.text.strip()
    )
