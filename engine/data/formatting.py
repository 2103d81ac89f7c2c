"""Conversations as training text, and the engine's prompt in exactly the same layout.

A conversation becomes a run of turns, each ``<role>text<|eot|>``::

    <|user|>anyone up for games tonight?<|eot|><|bot|>sure, after 9<|eot|><|user|>...<|eot|>

``<|user|>``, ``<|bot|>`` and ``<|eot|>`` are special tokens to the tokenizer. The end-of-turn
token is what teaches the model to answer one turn and stop.

Roles alternate by position, starting with ``<|user|>``. Training conversations are mostly
humans talking to humans, so there is no "bot" speaker in them; what the model must learn is
to answer as *the other side* of whoever spoke last. Labelling turns by position (first
speaker ``user``, the reply ``bot``, the next ``user`` …) turns every human exchange into an
example of replying, and it is the same layout the engine builds at inference, where the
person is ``user`` and the model answers as ``bot``. :func:`format_prompt` produces that
layout for the engine, ending in ``<|bot|>`` for the model to continue.

Before that, per message: text is cleaned (:func:`clean_text`), empty messages are dropped,
messages of opted-out authors are dropped always and the bot's own messages unless
``include_bot`` (a model trained on its own output drifts and degrades), and consecutive
messages by one author merge into one turn (joined by a newline). Both the training text
and the prompt go through the same steps, so the model sees at inference exactly the layout
it was trained on.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Literal

from engine.data.conversation import Conversation

USER_TOKEN = "<|user|>"
BOT_TOKEN = "<|bot|>"
EOT_TOKEN = "<|eot|>"
SPECIAL_TOKENS: tuple[str, ...] = (USER_TOKEN, BOT_TOKEN, EOT_TOKEN)

Role = Literal["user", "bot"]
ROLE_TOKENS: dict[Role, str] = {"user": USER_TOKEN, "bot": BOT_TOKEN}
_ROLES: dict[str, Role] = {"user": "user", "bot": "bot"}

# C0/C1 controls except tab and newline, lone surrogates (unencodable), the BOM and the
# invisible zero-width space / word joiner (a message of only those would be an empty turn).
# Zero-width (non-)joiners stay: emoji sequences and Persian spelling need them.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufeff\u200b\u2060]")
# Anything shaped like a special token: user text must never smuggle one in, or a user
# could end a turn or speak as the bot. Broader than SPECIAL_TOKENS on purpose.
_MARKER = re.compile(r"<\|[A-Za-z0-9_]+\|>")
_LINE_BREAKS = str.maketrans({"\r": "\n", "\u2028": "\n", "\u2029": "\n", "\x85": "\n"})
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
# A tail that more text could still turn into a marker: from a "<" on, only characters a
# marker (or markers nested in one) is made of. A ">" never is: it would close a marker.
_MARKER_START = re.compile(r"<[<|A-Za-z0-9_]*\Z")


def clean_text(text: str) -> str:
    """Normalise one message: NFC, no control characters or token markers, tidy spaces.

    Runs of spaces (tabs, NBSP, ideographic space) become one space, lines are stripped and
    blank lines dropped, so the same message always yields the same characters whatever
    client wrote it. Returns ``""`` for a message with nothing left.
    """
    return _tidy_spaces(_without_markers(_unified(text)))


def clean_prefix(text: str) -> str:
    """The start of ``clean_text(text + more)`` that ``text`` already fixes, whatever ``more``
    is: what a reply still being written may show of its cleaned final text.

    That is ``clean_text(text)`` less what a continuation could still change: the last
    character (a combining mark or jamo after it may compose with it, as may the one before
    it when the two compose) and a tail that more text could complete into a token marker.
    Spaces need nothing held back: ``clean_text`` drops trailing ones, and one that more text
    keeps comes back with it.
    """
    kept = _without_markers(_unified(text[: _composition_boundary(text)]))
    return _tidy_spaces(_MARKER_START.sub("", kept))


class CleanStream:
    """:func:`clean_prefix` of a text that only grows, at a cost that follows what was added
    rather than the whole text.

    It keeps ``clean_text`` of a head of the text that ends where cleaning the rest cannot
    reach back into it (no marker, composition or run of spaces crosses it): after a line
    break, after a space followed by a letter or digit, or between two CJK ideographs. The
    rest is cleaned on each call and joined to the head: by a newline, by a space (when the
    head's last line has content), or directly between ideographs.
    """

    def __init__(self) -> None:
        self._end = 0  # the head is text[: self._end]
        self._head = ""  # clean_text of the head
        self._open = False  # the head's last line has content
        self._joint = ""  # what joins the head to the cleaned rest

    def prefix(self, text: str) -> str:
        """``clean_prefix(text)``, for a ``text`` that begins with every one given before."""
        split = _last_split(text, self._end)
        if split > self._end:
            piece = text[self._end : split]
            self._head = self._joined(clean_text(piece))
            reduced = _without_markers(_unified(piece))
            if "\n" in reduced:
                self._open = bool(reduced.rsplit("\n", 1)[1].strip())
            else:
                self._open = self._open or bool(reduced.strip())
            self._end = split
            if _solid(text[split - 1]):
                self._joint = ""
            else:
                self._joint = " " if self._open else "\n"
        return self._joined(clean_prefix(text[self._end :]))

    def _joined(self, rest: str) -> str:
        if not self._head or not rest:
            return self._head or rest
        return self._head + self._joint + rest


_CJK_PUNCTUATION = frozenset("，。！？、：；")


def _solid(ch: str) -> bool:
    """A CJK ideograph or punctuation mark: it neither composes nor belongs to a marker."""
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or ch in _CJK_PUNCTUATION


def _last_split(text: str, start: int) -> int:
    """The last index after ``start`` where :class:`CleanStream` may cut: after a line
    break, after a space when a letter or digit is at it, or between two CJK characters
    (:func:`_solid`); ``start`` if there is none."""
    if text.endswith("\n") and len(text) > start:
        return len(text)
    for p in range(len(text) - 1, start, -1):
        before, ch = text[p - 1], text[p]
        if before == "\n" or (before == " " and ch.isalnum()) or (_solid(before) and _solid(ch)):
            return p
    return start


def _unified(text: str) -> str:
    """One line break, NFC, no control characters."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").translate(_LINE_BREAKS))
    return _CONTROL.sub("", text)


def _without_markers(text: str) -> str:
    while True:  # removing one marker can join the halves of another: "<|<|eot|>eot|>"
        stripped = _MARKER.sub("", text)
        if stripped == text:
            return text
        text = stripped


def _tidy_spaces(text: str) -> str:
    text = _HORIZONTAL_SPACE.sub(" ", text)
    return "\n".join(line.strip() for line in text.split("\n") if line.strip())


def _composition_boundary(text: str) -> int:
    """The last index ``j`` where NFC(text[:j] + anything) starts with NFC(text[:j]): text[j]
    is a starter (canonical combining class 0, and so is the first character it decomposes
    to) that does not compose with what precedes it; 0 if there is none. Nothing after such a
    starter can reorder or compose across it."""
    for j in range(len(text) - 1, 0, -1):
        ch = text[j]
        if unicodedata.combining(ch) or unicodedata.combining(unicodedata.normalize("NFD", ch)[0]):
            continue
        # What ch could compose with was itself composed from at most a few characters
        # (Hangul: leading + vowel jamo, then a trailing one joins them), all within 8.
        before = text[max(0, j - _COMPOSE_WINDOW) : j]
        joined = unicodedata.normalize("NFC", before + ch)
        if joined == unicodedata.normalize("NFC", before) + unicodedata.normalize("NFC", ch):
            return j
    return 0


_COMPOSE_WINDOW = 8


def conversation_turns(
    conversation: Conversation,
    *,
    include_bot: bool = False,
    max_turn_chars: int | None = None,
) -> list[tuple[Role, str]]:
    """The conversation's turns with their positional roles (see the module docstring)."""
    merged = authored_turns(conversation, include_bot=include_bot)
    return [
        ("user" if i % 2 == 0 else "bot", _cap(text, max_turn_chars))
        for i, (_, text) in enumerate(merged)
    ]


def authored_turns(
    conversation: Conversation, *, include_bot: bool = False
) -> list[tuple[str, str]]:
    """``(author, text)`` of each turn: the messages training keeps, cleaned, consecutive
    ones by one author merged (the turns :func:`conversation_turns` gives roles to)."""
    merged: list[tuple[str, str]] = []  # (author, text)
    for message in conversation.messages:
        if message.author in conversation.opted_out_authors:
            continue
        if message.is_bot and not include_bot:
            continue
        text = clean_text(message.text)
        if not text:
            continue
        if merged and merged[-1][0] == message.author:
            merged[-1] = (message.author, f"{merged[-1][1]}\n{text}")
        else:
            merged.append((message.author, text))
    return merged


def format_turns(turns: Iterable[tuple[Role, str]]) -> str:
    """``<role>text<|eot|>`` for each turn, concatenated. Texts must already be clean."""
    return "".join(f"{ROLE_TOKENS[role]}{text}{EOT_TOKEN}" for role, text in turns)


def format_conversation(
    conversation: Conversation,
    *,
    include_bot: bool = False,
    max_turn_chars: int | None = None,
) -> str:
    """One conversation as training text; ``""`` when no turn is left."""
    return format_turns(
        conversation_turns(conversation, include_bot=include_bot, max_turn_chars=max_turn_chars)
    )


def format_conversations(
    conversations: Iterable[Conversation],
    *,
    include_bot: bool = False,
    max_turn_chars: int | None = None,
    min_turns: int = 1,
) -> list[str]:
    """Training texts of the conversations that keep at least ``min_turns`` turns.

    ``min_turns=2`` keeps only conversations with at least one reply in them.
    """
    texts: list[str] = []
    for conversation in conversations:
        turns = conversation_turns(
            conversation, include_bot=include_bot, max_turn_chars=max_turn_chars
        )
        if turns and len(turns) >= min_turns:
            texts.append(format_turns(turns))
    return texts


def format_prompt(
    history: Sequence[tuple[str, str]],
    new_user_text: str,
    *,
    max_turn_chars: int | None = None,
) -> str:
    """The engine's prompt: ``history`` and the new message in the training layout + ``<|bot|>``.

    ``history`` is ``(role, text)`` pairs with role ``"user"`` or ``"bot"`` (the wire
    contract's ``Turn``). As in training: texts are cleaned, empty turns dropped, consecutive
    turns of one role merged, and turns capped at ``max_turn_chars``. Leading bot turns are
    dropped because training text always opens with a user turn. ``"system"`` turns are
    dropped: the model was never trained on a system role, so there is no layout to match.
    Raises ``ValueError`` for another role, or when ``new_user_text`` is empty once cleaned.
    """
    turns: list[tuple[Role, str]] = []
    for role, text in history:
        if role == "system":
            continue
        known = _ROLES.get(role)
        if known is None:
            raise ValueError(f"unknown role {role!r} in history (expected 'user' or 'bot')")
        _append_merged(turns, known, clean_text(text))
    new_text = clean_text(new_user_text)
    if not new_text:
        raise ValueError("the new message is empty once cleaned")
    _append_merged(turns, "user", new_text)
    while turns[0][0] == "bot":
        turns.pop(0)
    return format_turns((role, _cap(text, max_turn_chars)) for role, text in turns) + BOT_TOKEN


def _append_merged(turns: list[tuple[Role, str]], role: Role, text: str) -> None:
    if not text:
        return
    if turns and turns[-1][0] == role:
        turns[-1] = (role, f"{turns[-1][1]}\n{text}")
    else:
        turns.append((role, text))


def _cap(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    if max_chars < 1:
        raise ValueError(f"max_turn_chars must be at least 1, got {max_chars}")
    return text[:max_chars].rstrip()
