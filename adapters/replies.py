"""The one path from a request to its reply events, for every adapter.

:class:`Replies` submits a request through the queue client and yields its ``Delta`` events
and exactly one final ``Done`` or ``Error``: it never raises for a failed reply (a full queue,
a timeout, Redis failing all become a final :class:`~bot.wire.Error` with a message for
users), and it records the outcome in the adapter metrics with one log line per request.
The web page, the OpenAI API, Discord and Telegram all reply through it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Protocol, TypeVar

import msgspec

from adapters.metrics import AdapterMetrics
from bot.errors import ParleyError
from bot.safety import SafetyFilter, StreamGuard
from bot.wire import Delta, Done, Error, ErrorCode, ReplyEvent, Request

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class ReplyClient(Protocol):
    """What the web adapter needs of :class:`bot.queue.ParleyClient`."""

    def stream(self, request: Request, *, timeout_s: float) -> AsyncIterator[ReplyEvent]: ...


@asynccontextmanager
async def closing_iter(iterator: AsyncIterator[_T]) -> AsyncIterator[AsyncIterator[_T]]:
    """Like :func:`contextlib.aclosing` for any async iterator: closes it if it can be closed."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def now_ms() -> int:
    return int(time.time() * 1000)


def new_request_id() -> str:
    return uuid.uuid4().hex


class Replies:
    """Requests in, reply events out: errors become a final ``Error`` event, outcomes metrics."""

    def __init__(
        self,
        client: ReplyClient,
        *,
        adapter_id: str,
        timeout_s: float,
        metrics: AdapterMetrics,
        safety: SafetyFilter | None = None,
    ) -> None:
        self.client = client
        self.adapter_id = adapter_id
        self.timeout_s = timeout_s
        self._metrics = metrics
        self._safety = safety if safety is not None and safety.active else None

    async def events(
        self, request: Request, *, timeout_s: float | None = None
    ) -> AsyncGenerator[ReplyEvent, None]:
        """The request's ``Delta`` events, then exactly one ``Done`` or ``Error``; with a safety
        filter, only text it lets through (:mod:`bot.safety`)."""
        if self._safety is None:
            raw = self._events(request, timeout_s=timeout_s)
        else:
            raw = self._filtered(self._events(request, timeout_s=timeout_s), self._safety)
        async with aclosing(raw) as events:
            async for event in events:
                yield event

    async def _filtered(
        self, events: AsyncGenerator[ReplyEvent, None], safety: SafetyFilter
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Deltas of the text the guard releases; the final text as the filter judges it."""
        guard = StreamGuard(safety)
        text, shown = "", ""
        async with aclosing(events) as stream:
            async for event in stream:
                if isinstance(event, Delta):
                    text += event.text
                    visible = guard.visible(text)
                    if len(visible) > len(shown):
                        yield msgspec.structs.replace(event, text=visible[len(shown) :])
                        shown = visible
                    continue
                if isinstance(event, Done):
                    verdict = guard.final(event.text)
                    if verdict.blocked:
                        reasons = ", ".join(verdict.reasons)
                        for reason in verdict.reasons:
                            self._metrics.blocked.labels(self.adapter_id, reason).inc()
                        log.info("request %s: reply filtered (%s)", event.request_id, reasons)
                        event = msgspec.structs.replace(event, text=verdict.text)
                yield event

    async def _events(
        self, request: Request, *, timeout_s: float | None = None
    ) -> AsyncGenerator[ReplyEvent, None]:
        start = time.perf_counter()
        seq = 0
        final: Done | Error | None = None
        try:
            stream = self.client.stream(request, timeout_s=timeout_s or self.timeout_s)
            async with closing_iter(stream) as events:
                async for event in events:
                    seq = event.seq
                    if not isinstance(event, Delta):
                        final = event
                        break
                    yield event
        except ParleyError as e:  # Redis failed while submitting (the client yields the rest)
            log.warning("request %s failed in the queue: %s", request.id, e)
            final = self._error(request, seq, "unavailable", UNAVAILABLE_MESSAGE)
        if final is None:
            log.warning("request %s: the reply stream ended without a final event", request.id)
            final = self._error(request, seq, "unavailable", UNAVAILABLE_MESSAGE)
        self._record(request, final, time.perf_counter() - start)
        yield final

    def _record(self, request: Request, final: Done | Error, took_s: float) -> None:
        """Count the outcome and log the one line per request."""
        outcome = "done" if isinstance(final, Done) else final.code
        self._metrics.replies.labels(self.adapter_id, outcome).inc()
        if isinstance(final, Done):
            log.info(
                "request %s on %s: done in %.0f ms (queue %.0f ms, first token %.0f ms), "
                "%d prompt + %d completion tokens, model %s",
                request.id,
                request.conversation,
                took_s * 1000,
                final.queue_ms,
                final.ttft_ms,
                final.prompt_tokens,
                final.completion_tokens,
                final.model_version or "?",
            )
        else:
            log.info(
                "request %s on %s: %s after %.0f ms",
                request.id,
                request.conversation,
                outcome,
                took_s * 1000,
            )

    @staticmethod
    def _error(request: Request, seq: int, code: ErrorCode, message: str) -> Error:
        return Error(request_id=request.id, seq=seq + 1, code=code, message=message)


UNAVAILABLE_MESSAGE = "The bot is not available right now. Please try again later."
