"""The reply pump: shows a streaming reply on a chat platform by sending and editing messages.

A platform adapter gives :class:`StreamedReply` a :class:`MessageSink` — how to send a message
and how to edit one — and feeds it the reply's text as it grows. The pump edits at most once
per ``interval_s`` while the reply streams and always shows the final text; a reply longer
than the platform's limit continues in further messages (:func:`adapters.text.split_message`),
and a message is edited only when its text changed. A sink that finds its message gone (the
user deleted it) raises :class:`ReplyGone`, and the pump ends that reply quietly.

:func:`keep_typing` renews a platform's typing indicator until the first message is out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from adapters.text import Measure, split_message
from bot.wire import Delta, Done, Error, ReplyEvent

log = logging.getLogger(__name__)

H = TypeVar("H")


class ReplyGone(Exception):
    """The message being edited no longer exists (deleted, or its chat is gone)."""


class MessageSink(Protocol[H]):
    """How an adapter puts text on its platform. ``H`` is its handle of a sent message."""

    async def send(self, text: str, *, first: bool) -> H:
        """Send a new message; ``first`` is the reply's first (it references the user's)."""
        ...

    async def edit(self, handle: H, text: str) -> None:
        """Replace a sent message's text; raise :class:`ReplyGone` if it no longer exists."""
        ...


@dataclass
class _Shown(Generic[H]):
    handle: H
    text: str


@dataclass
class StreamedReply(Generic[H]):
    """One reply on a platform: its messages and the text each one shows."""

    sink: MessageSink[H]
    limit: int
    interval_s: float
    measure: Measure = len
    clock: Callable[[], float] = time.monotonic
    gone: bool = False
    edits: int = 0
    _shown: list[_Shown[H]] = field(default_factory=list)
    _last_render_s: float = float("-inf")

    @property
    def started(self) -> bool:
        """Whether a message of this reply is on the platform already."""
        return bool(self._shown)

    @property
    def messages(self) -> list[H]:
        return [shown.handle for shown in self._shown]

    async def update(self, text: str) -> None:
        """The reply so far: shown if ``interval_s`` has passed since the last render."""
        if self.clock() - self._last_render_s >= self.interval_s:
            await self.render(text)

    async def render(self, text: str) -> None:
        """Show ``text`` now: edit the messages whose part changed, send the parts not yet out."""
        if self.gone:
            return
        self._last_render_s = self.clock()
        parts = split_message(text, self.limit, measure=self.measure)
        try:
            for i, part in enumerate(parts):
                if i < len(self._shown):
                    shown = self._shown[i]
                    if shown.text != part:
                        await self.sink.edit(shown.handle, part)
                        shown.text = part
                        self.edits += 1
                else:
                    handle = await self.sink.send(part, first=i == 0)
                    self._shown.append(_Shown(handle, part))
        except ReplyGone:
            log.info("a reply's message was deleted while it streamed; ending that reply")
            self.gone = True


async def pump(reply: StreamedReply[H], events: AsyncIterator[ReplyEvent]) -> Done | Error | None:
    """Show ``events`` (deltas, then one final event) through ``reply``; the final event.

    A ``Done`` shows its whole text (the authority over the deltas); an ``Error`` is returned
    for the adapter to present (the pump shows nothing for it). ``None`` if the stream ended
    without a final event.
    """
    text = ""
    async for event in events:
        if isinstance(event, Delta):
            text += event.text
            if text.strip():
                await reply.update(text)
        elif isinstance(event, Done):
            if event.text.strip():
                await reply.render(event.text)
            return event
        else:
            return event
    return None


@contextlib.asynccontextmanager
async def keep_typing(
    show: Callable[[], Awaitable[None]], *, every_s: float, until: Callable[[], bool]
) -> AsyncIterator[None]:
    """Call ``show`` now and every ``every_s`` until ``until()`` is true or the block ends.

    A failing ``show`` is logged and retried at the next interval: a typing indicator is a
    courtesy, never a reason to lose the reply.
    """

    async def loop() -> None:
        while not until():
            try:
                await show()
            except Exception as e:  # a platform hiccup; the reply itself goes on
                log.debug("typing indicator failed: %s", e)
            await asyncio.sleep(every_s)

    task = asyncio.create_task(loop(), name="typing")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
