"""Putting text on Telegram within its limits, and surviving what the Bot API answers.

:class:`Sender` makes every send and edit: plain text (no ``parse_mode``, so "can't parse
entities" cannot happen), paced per chat (:class:`ChatPacer`: about one message a second in a
private chat, 20 a minute in a group), retried after a 429 for as long as ``retry_after``
says (counted), and after a 5xx or a network failure with a short backoff. "Message is not
modified" is success; a message or chat that is gone, a bot that was blocked, or a call that
keeps failing becomes :class:`~adapters.pump.ReplyGone`, which ends that reply quietly.

The Bot API has no idempotency key, so a ``sendMessage`` is repeated only after a failure
that proves it was not done: no connection could be made (or none taken from the pool), or
Telegram answered with an error. A call that failed after its request may have reached
Telegram (a read timeout, a dropped connection) is not repeated, since the message may well
be in the chat already: that reply ends there (counted as ``uncertain``), and if the message
did not arrive the user sees none of the reply, or only the part sent before. An edit is
repeated after any failure (editing to the same text again is harmless).

:class:`TelegramSink` is the pump's :class:`~adapters.pump.MessageSink` for one reply: its
first message quotes the user's in groups, goes to the user's forum topic, and is sent only
if the reply's claim in Redis is new (a redelivered update sends nothing twice).
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from telegram import Bot, LinkPreviewOptions, Message, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from adapters.pump import ReplyGone
from adapters.telegram.metrics import TelegramMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 6
"""Tries of one call through 429s and server errors before the reply is given up."""
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0)
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
MAX_TRACKED_CHATS = 10_000
"""Chats the pacer remembers before it forgets those that are idle."""


class ChatPacer:
    """Keeps at least ``interval_s`` between two calls to one chat (and longer after a 429)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next_s: dict[int, float] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def wait(self, chat_id: int, interval_s: float) -> None:
        if len(self._locks) > MAX_TRACKED_CHATS:
            self._forget_idle()
        lock = self._locks.setdefault(chat_id, asyncio.Lock())
        async with lock:
            delay_s = self._next_s.get(chat_id, 0.0) - self._clock()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            self._next_s[chat_id] = self._clock() + interval_s

    def _forget_idle(self) -> None:
        """Drop the chats nobody waits on and that may be written to now."""
        now = self._clock()
        for chat_id, lock in list(self._locks.items()):
            if not lock.locked() and self._next_s.get(chat_id, 0.0) <= now:
                del self._locks[chat_id]
                self._next_s.pop(chat_id, None)

    def hold(self, chat_id: int, seconds: float) -> None:
        """No call to ``chat_id`` for ``seconds`` (Telegram said so)."""
        self._next_s[chat_id] = max(self._next_s.get(chat_id, 0.0), self._clock() + seconds)


def retry_after_s(error: RetryAfter) -> float:
    """The wait a 429 asks for, in seconds (python-telegram-bot gives int or timedelta)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the int form is deprecated in favour of timedelta
        value = error.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def maybe_done(error: NetworkError) -> bool:
    """Whether the call that failed with ``error`` may still have taken effect at Telegram.

    python-telegram-bot raises a network failure from the httpx exception behind it: only a
    failure to connect (or to get a pooled connection) shows the request was never sent. A
    :class:`NetworkError` without one is Telegram's own error answer (a 5xx): not done.
    """
    cause = error.__cause__
    if cause is None or isinstance(cause, TelegramError):
        return False
    return not isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _gone(error: TelegramError) -> bool:
    """Whether ``error`` means the message or chat can no longer be written to."""
    text = str(error).lower()
    return isinstance(error, Forbidden) or any(
        phrase in text
        for phrase in ("message to edit not found", "chat not found", "message can't be edited")
    )


class Sender:
    """Every Bot API call that writes to a chat goes through here."""

    def __init__(self, bot: Bot, metrics: TelegramMetrics, adapter_id: str) -> None:
        self.bot = bot
        self.pacer = ChatPacer()
        self._metrics = metrics
        self._adapter_id = adapter_id

    async def send(
        self,
        chat_id: int,
        text: str,
        *,
        interval_s: float,
        thread_id: int | None = None,
        quote: int | None = None,
    ) -> int:
        """Send ``text``; the new message's id. Raises :class:`ReplyGone` if it cannot be."""
        reply = ReplyParameters(quote, allow_sending_without_reply=True) if quote else None

        async def call() -> Message:
            return await self.bot.send_message(
                chat_id,
                text,
                message_thread_id=thread_id,
                reply_parameters=reply,
                link_preview_options=NO_PREVIEW,
            )

        message = await self._call("sendMessage", chat_id, interval_s, call, repeatable=False)
        self._metrics.sent.labels(self._adapter_id).inc()
        return message.message_id

    async def edit(self, chat_id: int, message_id: int, text: str, *, interval_s: float) -> None:
        """Replace a message's text ("not modified" is fine); :class:`ReplyGone` if it is gone."""

        async def call() -> object:
            return await self.bot.edit_message_text(
                text, chat_id=chat_id, message_id=message_id, link_preview_options=NO_PREVIEW
            )

        try:
            await self._call("editMessageText", chat_id, interval_s, call)
        except _NotModified:
            return
        self._metrics.edits.labels(self._adapter_id).inc()

    async def typing(self, chat_id: int, thread_id: int | None) -> None:
        """Show "typing…" once (it lasts about five seconds); no pacing, no retries."""
        await self.bot.send_chat_action(chat_id, ChatAction.TYPING, message_thread_id=thread_id)

    async def _call(
        self,
        method: str,
        chat_id: int,
        interval_s: float,
        call: Callable[[], Awaitable[T]],
        *,
        repeatable: bool = True,
    ) -> T:
        """``call`` through 429s and failures; one that is not ``repeatable`` is tried again
        only after a failure that shows it was not done (:func:`maybe_done`)."""
        for attempt in range(MAX_ATTEMPTS):
            await self.pacer.wait(chat_id, interval_s)
            try:
                return await call()
            except RetryAfter as e:
                wait_s = retry_after_s(e)
                self._metrics.retry_after.labels(self._adapter_id).inc()
                log.warning("%s to chat %s: 429, waiting %.1f s", method, chat_id, wait_s)
                self.pacer.hold(chat_id, wait_s)
            except BadRequest as e:
                if "not modified" in str(e).lower():
                    raise _NotModified from e
                kind = _bad_request_kind(e)
                self._count(kind)
                if kind != "gone":
                    log.warning("%s to chat %s refused: %s; ending this reply", method, chat_id, e)
                raise ReplyGone(str(e)) from e
            except Forbidden as e:  # blocked by the user, removed from the group
                self._count("forbidden")
                log.info("%s to chat %s forbidden: %s", method, chat_id, e)
                raise ReplyGone(str(e)) from e
            except NetworkError as e:  # 5xx, timeouts, connection failures
                if not repeatable and maybe_done(e):
                    self._count("uncertain")
                    log.warning(
                        "%s to chat %s failed after it may have reached Telegram (%s); not "
                        "repeating it, which could show it twice; ending this reply",
                        method,
                        chat_id,
                        e,
                    )
                    raise ReplyGone(f"{method} may have been done: {e}") from e
                self._count("network")
                pause_s = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                log.warning(
                    "%s to chat %s failed (%s); retrying in %.1f s", method, chat_id, e, pause_s
                )
                self.pacer.hold(chat_id, pause_s)
            except TelegramError as e:
                self._count("other")
                log.warning("%s to chat %s failed: %s; ending this reply", method, chat_id, e)
                raise ReplyGone(str(e)) from e
        log.warning("%s to chat %s: giving up after %d attempts", method, chat_id, MAX_ATTEMPTS)
        raise ReplyGone(f"{method} kept failing")

    def _count(self, kind: str) -> None:
        """Count a failed call by kind: a small fixed set, so the label stays bounded."""
        self._metrics.errors.labels(self._adapter_id, kind).inc()


def _bad_request_kind(error: BadRequest) -> str:
    text = str(error).lower()
    if "too long" in text:
        return "too_long"
    if _gone(error):
        return "gone"
    return "bad_request"


class _NotModified(Exception):
    """The edit's text equals the message's: nothing to do."""


Claim = Callable[[], Awaitable[bool]]
"""True if this process may send the reply (it is the first to claim it)."""


@dataclass
class TelegramSink:
    """Where one reply goes: a chat (and topic), quoting the user's message in groups."""

    sender: Sender
    chat_id: int
    interval_s: float
    claim: Claim
    thread_id: int | None = None
    quote: int | None = None

    async def send(self, text: str, *, first: bool) -> int:
        if first and not await self.claim():
            log.info("chat %s: this reply was already sent; not sending it again", self.chat_id)
            raise ReplyGone("already replied")
        return await self.sender.send(
            self.chat_id,
            text,
            interval_s=self.interval_s,
            thread_id=self.thread_id,
            quote=self.quote if first else None,
        )

    async def edit(self, handle: int, text: str) -> None:
        await self.sender.edit(self.chat_id, handle, text, interval_s=self.interval_s)
