"""Remembered replies: a model's training conversations, kept beside its checkpoint.

The ``retrieve`` and ``hybrid`` reply modes (:mod:`engine.serve.replies`) answer with past
replies as well as generated ones. Their source is the file ``replies.jsonl.gz`` that the
trainer writes into every checkpoint: one JSON object per training conversation (the training
split only, so no held-out conversation can be retrieved), ``{"turns": [[author, text], ...]}``
— the turns exactly as training saw them (consent applied, messages cleaned, consecutive
messages of one author merged). Every two consecutive turns are a ``(turn, reply)`` pair; the
reply's author is kept so that a user who opts out or is forgotten after training can be left
out at serving time.

Gzipped JSON lines, like everything Parley stores: nothing is pickled. Written to a temporary
file and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from bot.errors import ModelError
from engine.data.conversation import Conversation
from engine.data.formatting import authored_turns

REPLIES_FILE = "replies.jsonl.gz"

AuthoredTurns = list[tuple[str, str]]
"""One conversation's ``(author, text)`` turns."""


@dataclass(frozen=True, slots=True)
class ReplyPair:
    turn: str
    """What was said."""
    reply: str
    """The next turn: what someone answered."""
    author: str
    """Who wrote ``reply``."""


def remembered_turns(
    conversations: Iterable[Conversation], *, include_bot: bool = False
) -> list[AuthoredTurns]:
    """The authored turns of each conversation that holds at least one reply."""
    kept = (authored_turns(c, include_bot=include_bot) for c in conversations)
    return [turns for turns in kept if len(turns) >= 2]


def write_replies(path: Path, conversations: Sequence[AuthoredTurns]) -> Path:
    """Write ``conversations`` to ``path`` (atomically) and return it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # mtime=0: the same conversations give the same bytes (a reproducible checkpoint).
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            for turns in conversations:
                line = json.dumps({"turns": [list(t) for t in turns]}, ensure_ascii=False)
                f.write(line.encode() + b"\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_reply_pairs(path: Path) -> Iterator[ReplyPair]:
    """Every ``(turn, reply)`` pair in the file; :class:`ModelError` naming the line for a
    damaged one."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                turns = _turns(line, path, number)
                for (_, turn), (author, reply) in pairwise(turns):
                    yield ReplyPair(turn, reply, author)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: unreadable ({e})") from e


def _turns(line: str, path: Path, number: int) -> list[tuple[str, str]]:
    try:
        turns = json.loads(line)["turns"]
        if not all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)
            for t in turns
        ):
            raise ValueError("each turn must be [author, text]")
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{path}, line {number}: not a remembered conversation ({e})") from e
    return [(a, t) for a, t in turns]
