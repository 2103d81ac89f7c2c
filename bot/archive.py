"""The conversation archive: every archived message in one SQLite file, with consent and feedback.

The trainer service (:mod:`bot.trainer`) is its only writer: it moves logged exchanges in
(:meth:`Archive.add_exchanges`), applies ``/forget``, ``/optout``, ``/optin`` and 👍/👎, and
exports the JSON Lines conversations ``parley train`` reads (:meth:`Archive.export`).

One row per message (a logged exchange is two: the user's message and the bot's reply)::

    messages(id, request_id, role, platform, chat, user, conversation, text, created_ms,
             model_version, feedback, source)      UNIQUE (request_id, role)

The unique key makes archiving idempotent: a log entry delivered twice (a trainer crashed
between committing and acknowledging it) is stored once. A regenerated exchange (the
safety filter blocked a reply and the engine answered the same message again,
``Exchange.regenerates``) is stored under the original request's id and its reply *replaces*
the blocked one (feedback kept: the user only ever saw the regenerated reply), so a blocked
reply the user never saw is not left behind as training data, and the user's message is
stored once. ``consent`` holds the users who opted out (their messages are neither archived
nor exported); ``pending_feedback`` holds reactions to replies not archived yet, applied when
the reply arrives.

The database runs in WAL mode, so ``parley archive stats`` can read while the trainer writes.
Text is stored as given; the exporter does not clean it (the trainer's formatting does).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from bot.errors import ParleyError
from bot.wire import Exchange

ARCHIVE_SCHEMA = 1
CONVERSATION_GAP_MS = 3600 * 1000
"""Silence after which a chat's messages start a new exported conversation (one hour)."""
BOT_AUTHOR = "parley"
"""The ``author`` of the bot's own messages in an export."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'bot')),
    platform TEXT NOT NULL,
    chat TEXT NOT NULL,
    user TEXT NOT NULL,
    conversation TEXT NOT NULL,
    text TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    model_version TEXT NOT NULL DEFAULT '',
    feedback INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT 'log',
    UNIQUE (request_id, role)
);
CREATE INDEX IF NOT EXISTS messages_user ON messages (user);
CREATE INDEX IF NOT EXISTS messages_chat ON messages (platform, chat, created_ms);
CREATE TABLE IF NOT EXISTS consent (
    user TEXT PRIMARY KEY,
    opted_out INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_feedback (
    request_id TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
"""

BotReplies = Literal["never", "good"]
_T = TypeVar("_T")


class ArchiveError(ParleyError):
    """The archive file cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """One message to archive (a logged exchange gives two, an import one per message)."""

    request_id: str
    role: Literal["user", "bot"]
    platform: str
    chat: str
    user: str
    conversation: str
    text: str
    created_ms: int
    model_version: str = ""
    source: str = "log"
    replaces: bool = False
    """A regenerated reply: it takes the place of the reply already archived for its request
    id (a blocked one) instead of being skipped as a duplicate."""


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What :meth:`Archive.forget` deleted."""

    user: str
    messages: int
    """The user's own messages deleted."""
    replies: int
    """The bot's replies to them deleted with them."""


@dataclass(frozen=True, slots=True)
class ExportStats:
    conversations: int
    messages: int
    first_ms: int | None
    last_ms: int | None
    platforms: tuple[str, ...]
    opted_out_users: int


def chat_of(conversation: str, platform: str) -> str:
    """The chat part of a context key: ``platform:chat:user`` -> ``chat``; a key of another
    shape is its own chat (without the platform prefix)."""
    rest = conversation.removeprefix(f"{platform}:")
    chat, sep, _user = rest.rpartition(":")
    return chat if sep and chat else rest


def exchange_messages(exchange: Exchange) -> tuple[ArchivedMessage, ArchivedMessage]:
    """The user's message and the bot's reply of one logged exchange (of a regenerated
    exchange: under the original request's id, the reply replacing the blocked one)."""
    chat = chat_of(exchange.conversation, exchange.platform)
    common: dict[str, Any] = {
        "request_id": exchange.regenerates or exchange.request_id,
        "platform": exchange.platform,
        "chat": chat,
        "user": exchange.user,
        "conversation": exchange.conversation,
        "model_version": exchange.model_version,
    }
    asked = ArchivedMessage(
        role="user", text=exchange.prompt, created_ms=exchange.created_ms, **common
    )
    # The reply is stamped a millisecond later so it sorts after the message it answers.
    answered = ArchivedMessage(
        role="bot",
        text=exchange.reply,
        created_ms=exchange.created_ms + 1,
        replaces=bool(exchange.regenerates),
        **common,
    )
    return asked, answered


_INSERT_MESSAGE = (
    "INSERT OR IGNORE INTO messages (request_id, role, platform, chat, user, "
    "conversation, text, created_ms, model_version, source) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_REPLACE_MESSAGE = (
    _INSERT_MESSAGE.replace("INSERT OR IGNORE", "INSERT")
    + " ON CONFLICT (request_id, role) DO UPDATE SET text = excluded.text, "
    "model_version = excluded.model_version"
)
"""A regenerated reply: the blocked reply's row takes its text (and keeps its feedback)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Archive:
    """The SQLite archive at ``path`` (created on first use). Not thread-safe: one per thread.

    Every method commits before it returns; a failure raises :class:`ArchiveError` and
    leaves the archive as it was.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={ARCHIVE_SCHEMA}")
        except (sqlite3.Error, OSError) as e:
            raise ArchiveError(f"cannot open the archive {path}: {e}") from e

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, statements: Iterable[tuple[str, Sequence[object]]]) -> list[int]:
        """Run ``statements`` in one transaction; returns each one's changed-row count."""
        counts = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    counts.append(self._db.execute(sql, args).rowcount)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already (disk full)
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise ArchiveError(f"cannot write the archive {self.path}: {e}") from e
        return counts

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as e:
            raise ArchiveError(f"cannot read the archive {self.path}: {e}") from e

    # -- writing ---------------------------------------------------------------------------

    def add(self, messages: Iterable[ArchivedMessage]) -> int:
        """Archive ``messages`` in one transaction, skipping any already there (same request
        id and role; a message that ``replaces`` takes its place instead) and any of an
        opted-out user; returns how many were new or replaced."""
        opted_out = self.opted_out()
        rows = [m for m in messages if m.user not in opted_out]
        statements: list[tuple[str, Sequence[object]]] = [
            (
                _REPLACE_MESSAGE if m.replaces else _INSERT_MESSAGE,
                (
                    m.request_id,
                    m.role,
                    m.platform,
                    m.chat,
                    m.user,
                    m.conversation,
                    m.text,
                    m.created_ms,
                    m.model_version,
                    m.source,
                ),
            )
            for m in rows
        ]
        bot_ids = sorted({m.request_id for m in rows if m.role == "bot"})
        for rid in bot_ids:  # a reaction that arrived before its reply was archived
            statements.append(
                (
                    "UPDATE messages SET feedback = (SELECT value FROM pending_feedback "
                    "WHERE request_id = ?) WHERE request_id = ? AND role = 'bot' AND EXISTS "
                    "(SELECT 1 FROM pending_feedback WHERE request_id = ?)",
                    (rid, rid, rid),
                )
            )
            statements.append(("DELETE FROM pending_feedback WHERE request_id = ?", (rid,)))
        counts = self._write(statements)
        return sum(counts[: len(rows)])

    def add_exchanges(self, exchanges: Iterable[Exchange]) -> int:
        """Archive logged exchanges (both sides of each); returns how many messages were new."""
        return self.add(m for e in exchanges for m in exchange_messages(e))

    def set_feedback(self, request_id: str, value: int) -> bool:
        """Record 👍 (1) / 👎 (-1) / none (0) on the reply to ``request_id``; returns whether
        that reply is archived (if not yet, the value waits and is applied when it is)."""
        if value not in (-1, 0, 1):
            raise ValueError(f"feedback must be -1, 0 or 1, got {value}")
        updated, _ = self._write(
            [
                (
                    "UPDATE messages SET feedback = ? WHERE request_id = ? AND role = 'bot'",
                    (value, request_id),
                ),
                (
                    "INSERT INTO pending_feedback (request_id, value, updated_ms) "
                    "SELECT ?, ?, ? WHERE changes() = 0 ON CONFLICT (request_id) "
                    "DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
                    (request_id, value, _now_ms()),
                ),
            ]
        )
        return updated > 0

    # -- consent ---------------------------------------------------------------------------

    def forget(self, user: str) -> Forgotten:
        """Delete every message of ``user`` and the bot's replies to them, and opt them out."""
        rows = self._read("SELECT COUNT(*) FROM messages WHERE user = ? AND role = 'user'", (user,))
        own = int(rows[0][0])
        _, deleted, _ = self._write(
            [
                (
                    "DELETE FROM pending_feedback WHERE request_id IN "
                    "(SELECT request_id FROM messages WHERE user = ?)",
                    (user,),
                ),
                ("DELETE FROM messages WHERE user = ?", (user,)),
                self._consent_statement(user, opted_out=True),
            ]
        )
        return Forgotten(user, messages=own, replies=deleted - own)

    def opt_out(self, user: str) -> None:
        """Archive nothing more of ``user`` and keep what is archived out of every export."""
        self._write([self._consent_statement(user, opted_out=True)])

    def opt_in(self, user: str) -> None:
        """Undo :meth:`opt_out` (and the opt-out :meth:`forget` records)."""
        self._write([("DELETE FROM consent WHERE user = ?", (user,))])

    @staticmethod
    def _consent_statement(user: str, *, opted_out: bool) -> tuple[str, Sequence[object]]:
        return (
            "INSERT INTO consent (user, opted_out, updated_ms) VALUES (?, ?, ?) "
            "ON CONFLICT (user) DO UPDATE SET opted_out = excluded.opted_out, "
            "updated_ms = excluded.updated_ms",
            (user, int(opted_out), _now_ms()),
        )

    def opted_out(self) -> set[str]:
        return {str(r[0]) for r in self._read("SELECT user FROM consent WHERE opted_out = 1")}

    def count_user(self, user: str) -> int:
        """Messages archived of ``user`` (theirs and the bot's replies to them)."""
        rows = self._read("SELECT COUNT(*) FROM messages WHERE user = ?", (user,))
        return int(rows[0][0])

    # -- reading ---------------------------------------------------------------------------

    def conversations(
        self,
        *,
        bot_replies: BotReplies = "good",
        exclude_users: Iterable[str] = (),
        good_reply_weight: int = 1,
        gap_ms: int = CONVERSATION_GAP_MS,
        exclude_text: Callable[[str], bool] | None = None,
    ) -> Iterator[ExportedConversation]:
        """The archive as JSONL conversation records (the format of ``engine.data.jsonl``).

        A chat's messages, in time order, are cut into conversations wherever nobody spoke for
        ``gap_ms``; a conversation's id is its chat and first message's request id, so it
        stays the same across exports (and on the same side of the train/validation split).
        Messages of opted-out users (and of ``exclude_users``) are left out, and with them the
        bot's replies to them; the bot's replies are left out unless ``bot_replies`` is
        ``"good"`` and the reply has a 👍. Kept replies are written with ``"bot": false``
        (the trainer skips ``bot`` messages) and ``"role": "bot"``; each, with the message
        it answers, is written ``good_reply_weight`` times in a row (weighting inside the
        conversation keeps its id unique and its copies on one side of the split).
        Messages for which ``exclude_text`` is true (the safety filter's
        ``exclude_from_training``) are left out too.
        """
        excluded = self.opted_out() | set(exclude_users)
        rows = self._read(
            "SELECT request_id, role, platform, chat, user, text, created_ms, feedback "
            "FROM messages ORDER BY platform, chat, created_ms, id"
        )
        current: _Builder | None = None
        for rid, role, platform, chat, user, text, created_ms, feedback in rows:
            if user in excluded:
                continue
            if role == "bot" and not (bot_replies == "good" and feedback == 1):
                continue
            if exclude_text is not None and exclude_text(str(text)):
                continue
            at = int(created_ms)
            if current is None or not current.continues(str(platform), str(chat), at, gap_ms):
                if current is not None:
                    yield current.build()
                current = _Builder(str(platform), str(chat), str(rid), at, good_reply_weight)
            current.add(str(role), str(user), str(text), at, int(feedback))
        if current is not None:
            yield current.build()

    def export(
        self,
        path: Path,
        *,
        bot_replies: BotReplies = "good",
        good_reply_weight: int = 1,
        exclude_users: Iterable[str] = (),
        exclude_text: Callable[[str], bool] | None = None,
    ) -> ExportStats:
        """Write :meth:`conversations` to ``path`` as JSONL (atomically: written beside it and
        renamed), with replies marked good weighted as :meth:`conversations` says. Returns
        what was written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        conversations = messages = 0
        first: int | None = None
        last: int | None = None
        platforms: set[str] = set()
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for c in self.conversations(
                    bot_replies=bot_replies,
                    exclude_users=exclude_users,
                    good_reply_weight=good_reply_weight,
                    exclude_text=exclude_text,
                ):
                    f.write(json.dumps(c.record, ensure_ascii=False) + "\n")
                    conversations += 1
                    messages += c.messages
                    first = c.first_ms if first is None else min(first, c.first_ms)
                    last = c.last_ms if last is None else max(last, c.last_ms)
                    platforms.add(c.platform)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ExportStats(
            conversations, messages, first, last, tuple(sorted(platforms)), len(self.opted_out())
        )

    def stats(self) -> list[tuple[str, str, str, int]]:
        """``(platform, chat, day, messages)`` rows, day as ``YYYY-MM-DD`` (UTC)."""
        rows = self._read(
            "SELECT platform, chat, date(created_ms / 1000, 'unixepoch') AS day, COUNT(*) "
            "FROM messages GROUP BY platform, chat, day ORDER BY platform, chat, day"
        )
        return [(str(p), str(c), str(d), int(n)) for p, c, d, n in rows]

    def total(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM messages")[0][0])


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class ExportedConversation:
    """One conversation of an export: its JSONL record and what the exporter counts."""

    record: dict[str, object]
    platform: str
    messages: int
    first_ms: int
    last_ms: int
    good: bool
    """Whether it holds a bot reply marked good."""


class _Builder:
    """Collects one chat's messages until a gap ends the conversation."""

    def __init__(self, platform: str, chat: str, first_id: str, at: int, weight: int) -> None:
        self.platform, self.chat, self.first_id = platform, chat, first_id
        self.first_ms = self.last_ms = at
        self.weight = weight
        self.messages: list[dict[str, object]] = []
        self.good = False

    def continues(self, platform: str, chat: str, at: int, gap_ms: int) -> bool:
        return (platform, chat) == (self.platform, self.chat) and at - self.last_ms <= gap_ms

    def add(self, role: str, user: str, text: str, at: int, feedback: int) -> None:
        self.last_ms = at
        if role == "bot":
            self.good = self.good or feedback == 1
            reply = {
                "author": BOT_AUTHOR,
                "text": text,
                "bot": False,
                "ts": _iso(at),
                "role": "bot",
            }
            asked = (
                self.messages[-1:]
                if self.messages and self.messages[-1].get("role") != "bot"
                else []
            )
            self.messages.append(reply)
            for _ in range(self.weight - 1 if asked else 0):
                self.messages.extend([asked[0], reply])
        else:
            self.messages.append({"author": user, "text": text, "bot": False, "ts": _iso(at)})

    def build(self) -> ExportedConversation:
        record: dict[str, object] = {
            "id": f"{self.platform}:{self.chat}:{self.first_id}",
            "source": self.platform,
            "messages": self.messages,
        }
        return ExportedConversation(
            record, self.platform, len(self.messages), self.first_ms, self.last_ms, self.good
        )


class AsyncArchive:
    """The archive for an event loop: every call runs on one thread of its own (sqlite3
    blocks, and a connection stays on the thread that opened it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="parley-archive")
        self._archive: Archive | None = None

    def _run(self, fn: Callable[[Archive], _T]) -> _T:
        if self._archive is None:
            self._archive = Archive(self.path)
        return fn(self._archive)

    async def call(self, fn: Callable[[Archive], _T]) -> _T:
        """``fn(archive)`` on the archive's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn)

    async def close(self) -> None:
        def close(_: Archive) -> None:
            if self._archive is not None:
                self._archive.close()
                self._archive = None

        if self._archive is not None:
            await self.call(close)
        self._executor.shutdown(wait=True)


def open_archive(path: Path) -> closing[Archive]:
    """``with open_archive(path) as archive:`` — the archive, closed at the end of the block."""
    return closing(Archive(path))
