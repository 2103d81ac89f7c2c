"""The one path from a request to its reply events, for every adapter.

:class:`Replies` submits a request through the queue client and yields its ``Delta`` events
and exactly one final ``Done`` or ``Error``: it never raises for a failed reply (a full queue,
a timeout, Redis failing all become a final :class:`~bot.wire.Error` with a message for
users), and it records the outcome in the adapter metrics with one log line per request.
The web page, the OpenAI API, Discord and Telegram all reply through it.

With a safety filter (:mod:`bot.safety`) it passes on only text the filter lets through, and
a blocked reply is amended in the stored history to what the user is shown. Under
its ``regenerate`` action a blocked reply is asked for again (:func:`bot.safety.regeneration`)
up to ``regenerate_attempts`` times: only the first attempt streams (what the guard releases),
a later attempt's text arrives whole in the final ``Done`` (which replaces what was shown: the
pump edits the platform message, the page its bubble), and the replacement is sent only if
every attempt is blocked or asking again fails; then the stored reply is amended to read the
replacement (a ``ControlRequest`` ``amend``), so the blocked text does not stay in the
conversation's history either. The caller sees one reply to its request: every event carries
the request's own id, numbered on from the last one it was given.
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
from bot.safety import SafetyFilter, StreamGuard, Verdict, regeneration
from bot.wire import ChatRequest, ControlRequest, Delta, Done, Error, ErrorCode, ReplyEvent, Request

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
        self, request: Request, *, timeout_s: float | None = None, retractable: bool = True
    ) -> AsyncGenerator[ReplyEvent, None]:
        """The request's ``Delta`` events, then exactly one ``Done`` or ``Error``; with a safety
        filter, only text it lets through (:mod:`bot.safety`).

        ``retractable``: whether the caller can replace text it has shown (a platform message
        it edits, the page's bubble). One that cannot (an OpenAI-style stream) is streamed
        nothing under the ``regenerate`` action: it gets the passed reply whole, at the end."""
        safety = self._safety
        if safety is None:
            raw = self._events(request, timeout_s=timeout_s)
        elif safety.action == "regenerate" and isinstance(request, ChatRequest):
            raw = self._regenerating(request, safety, timeout_s=timeout_s, stream=retractable)
        else:
            raw = self._filtered(request, self._events(request, timeout_s=timeout_s), safety)
        async with aclosing(raw) as events:
            async for event in events:
                yield event

    async def _filtered(
        self,
        request: ChatRequest | ControlRequest,
        events: AsyncGenerator[ReplyEvent, None],
        safety: SafetyFilter,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Deltas of the text the guard releases; the final text as the filter judges it. A
        blocked chat reply is amended in the stored history to what the user is shown, so the
        next prompt does not carry the blocked text."""
        guard = _Released(StreamGuard(safety))
        async with aclosing(events) as stream:
            async for event in stream:
                if isinstance(event, Delta):
                    released = guard.add(event.text)
                    if released:
                        yield msgspec.structs.replace(event, text=released)
                    continue
                if isinstance(event, Done):
                    verdict = self._judge(event, safety)
                    if verdict.blocked:
                        if isinstance(request, ChatRequest):
                            await self._amend(request, verdict.text)
                        event = msgspec.structs.replace(event, text=verdict.text)
                yield event

    async def _regenerating(
        self, request: ChatRequest, safety: SafetyFilter, *, timeout_s: float | None, stream: bool
    ) -> AsyncGenerator[ReplyEvent, None]:
        """The first reply the filter passes: the request's own, else a regeneration's (up to
        ``regenerate_attempts``), else the replacement. Only the first attempt streams, and
        only to a caller that can take the text back; every event is renumbered as the
        request's own."""
        seq = 0
        blocked: Done | None = None
        for attempt in range(safety.regenerate_attempts + 1):
            asked = request if attempt == 0 else regeneration(request, attempt)
            guard = _Released(StreamGuard(safety))
            final: Done | Error | None = None
            async with aclosing(self._events(asked, timeout_s=timeout_s)) as events:
                async for event in events:
                    if not isinstance(event, Delta):
                        final = event
                    elif attempt == 0 and stream and (released := guard.add(event.text)):
                        yield _as_request(event, request, seq, text=released)
                        seq += 1
            if isinstance(final, Error) and blocked is None:
                yield _as_request(final, request, seq)  # the request itself failed
                return
            if isinstance(final, Done) and not self._judge(final, safety).blocked:
                yield _as_request(final, request, seq)
                return
            if isinstance(final, Done):
                blocked = final
                if attempt < safety.regenerate_attempts:
                    self._metrics.regenerated.labels(self.adapter_id).inc()
                    log.info(
                        "request %s: regenerating the blocked reply (%d of %d)",
                        request.id,
                        attempt + 1,
                        safety.regenerate_attempts,
                    )
                continue
            log.warning("request %s: regenerating failed; sending the replacement", request.id)
            break
        assert blocked is not None
        reason = "failed" if isinstance(final, Error) else "blocked"
        self._metrics.regenerate_fallbacks.labels(self.adapter_id, reason).inc()
        await self._amend(request, safety.replacement)
        yield _as_request(blocked, request, seq, text=safety.replacement)

    async def _amend(self, request: ChatRequest, text: str) -> None:
        """Have the engine make the stored reply to ``request`` read ``text`` (what the user
        is shown); a failure is logged, and the reply goes on."""
        amend = ControlRequest(
            id=f"{request.id}~amend",
            conversation=request.conversation,
            reply_to=request.reply_to,
            command="amend",
            user=request.user,
            created_ms=now_ms(),
            target=request.id,
            text=text,
        )
        final: ReplyEvent | None = None
        try:
            async with closing_iter(self.client.stream(amend, timeout_s=AMEND_TIMEOUT_S)) as events:
                async for event in events:
                    if not isinstance(event, Delta):
                        final = event
                        break
        except ParleyError as e:
            log.warning("request %s: amending the stored reply failed: %s", request.id, e)
            return
        if not isinstance(final, Done):
            log.warning("request %s: the stored reply was not amended (%r)", request.id, final)

    def _judge(self, done: Done, safety: SafetyFilter) -> Verdict:
        """The filter's verdict on a whole reply; a blocked one is counted and logged (its
        reasons, never its text)."""
        verdict = safety.check(done.text)
        if verdict.blocked:
            for reason in verdict.reasons:
                self._metrics.blocked.labels(self.adapter_id, reason).inc()
            log.info("request %s: reply filtered (%s)", done.request_id, ", ".join(verdict.reasons))
        return verdict

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


class _Released:
    """A streaming reply's text and how much of it the guard has released."""

    def __init__(self, guard: StreamGuard) -> None:
        self.guard = guard
        self.text = ""
        self.shown = ""

    def add(self, delta: str) -> str:
        """Take the next piece of text; returns what it newly releases (often nothing)."""
        self.text += delta
        visible = self.guard.visible(self.text)
        if len(visible) <= len(self.shown):
            return ""
        released, self.shown = visible[len(self.shown) :], visible
        return released


_E = TypeVar("_E", Delta, Done, Error)


def _as_request(event: _E, request: ChatRequest, seq: int, **changes: str) -> _E:
    """``event`` (of the request or of one of its regenerations) as the request's own."""
    return msgspec.structs.replace(event, request_id=request.id, seq=seq, **changes)


UNAVAILABLE_MESSAGE = "The bot is not available right now. Please try again later."
AMEND_TIMEOUT_S = 10.0
"""How long a fallback waits for the engine to amend the stored reply before it goes on."""
