"""The adapter's side of the queue: submit requests, receive their reply events.

One :class:`ParleyClient` per adapter process. Two background tasks do all Redis work, so
many requests in flight cost two coroutines, not two per request:

- the *submitter* takes every request submitted since its last round trip and appends them
  in one pipeline (one bounded-append script call per shard), so throughput grows with load
  and a lone request waits for no batch;
- the *reader* blocks on the adapter's reply stream and routes each event to the mailbox of
  its request, dropping duplicates by ``(request_id, seq)`` (delivery is at-least-once
  upstream) and events of requests this process does not know (it restarted). A request
  reclaimed from a dead or stalled engine is answered again as a higher ``attempt``: events
  of an older attempt are dropped once a newer one is heard from, and once one attempt's
  deltas were passed on, a later attempt's deltas are not (they would continue one text
  with another); its final event, which carries the whole text, is.

A restarted adapter can take over requests that an earlier process submitted and did not see
answered: a client with that process's adapter id adopts them (:meth:`ParleyClient.adopt`,
before :meth:`ParleyClient.start`) and reads the reply stream from where their events can
begin (``start(from_id=...)``, a :attr:`ParleyClient.position` taken before their submit)
instead of from its end.

A request stream is bounded by ``max_stream_len``: the check and the append happen in one
Lua script, so a full stream refuses the request at once (:class:`QueueFull`) instead of
trimming an older one away.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType

from redis.exceptions import RedisError

from bot import keys, wire
from bot.errors import QueueError, QueueFull, WireError
from bot.queue._replies import stream_entries
from bot.queue._scripts import Call, LuaScript, call_all
from bot.queue.tasks import cancel_and_wait
from bot.redis import Redis
from bot.settings import RedisSettings
from bot.wire import ChatRequest, ControlRequest, Error, ReplyEvent

log = logging.getLogger(__name__)

BUSY_MESSAGE = "Parley is busy right now — please try again in a moment."
UNAVAILABLE_MESSAGE = "Parley is not answering right now — please try again later."
CLOSED_MESSAGE = "Parley is restarting — please try again in a moment."

READ_COUNT = 1024
"""Most reply events taken per XREAD."""
READ_BLOCK_MS = 2_000
"""How long one XREAD waits; short enough that a closed client notices soon."""
RETRY_MIN_S = 0.05
RETRY_MAX_S = 5.0

_EVENTS_FIELD = keys.EVENTS_FIELD.encode()

# KEYS[1]: a request stream. ARGV[1]: its bound, ARGV[2]: the entry field, ARGV[3..]: payloads.
# Appends payloads in order while the stream is below its bound; returns how many it appended.
# Check and append run as one script, so concurrent adapters cannot overfill the stream.
_BOUNDED_XADD = LuaScript("""
local room = tonumber(ARGV[1]) - redis.call('XLEN', KEYS[1])
local added = 0
for i = 3, #ARGV do
  if added >= room then break end
  redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[i])
  added = added + 1
end
return added
""")


@dataclass(slots=True)
class _Outbound:
    """A request waiting for the submitter's next round trip."""

    stream: str
    payload: bytes
    done: asyncio.Future[None]


@dataclass(slots=True)
class _Mailbox:
    """Events of one request in flight, in arrival order, with the seqs already seen (of
    ``attempt``, the latest delivery attempt heard from) and the attempt whose deltas were
    passed on (0: none yet)."""

    events: deque[ReplyEvent] = field(default_factory=deque)
    seen: set[int] = field(default_factory=set)
    waiter: asyncio.Future[None] | None = None
    last_seq: int = -1
    attempt: int = 0
    streamed: int = 0

    def put(self, event: ReplyEvent) -> None:
        self.events.append(event)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self, timeout_s: float | None) -> ReplyEvent:
        """The next event; ``TimeoutError`` when none comes within ``timeout_s``."""
        while not self.events:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self.waiter
            finally:
                self.waiter = None
        return self.events.popleft()


class ParleyClient:
    """Submits requests to the engines and streams back their replies.

    ``redis`` must return bytes (:func:`bot.redis.connect` makes such a client); the caller
    owns it and closes it after :meth:`close`.
    """

    def __init__(self, redis: Redis, settings: RedisSettings, adapter_id: str) -> None:
        self.redis = redis
        self.settings = settings
        self.adapter_id = adapter_id
        self.reply_key = keys.reply_stream(adapter_id)
        self._mailboxes: dict[str, _Mailbox] = {}
        self._outbox: list[_Outbound] = []
        self._outbox_ready = asyncio.Event()
        self._last_id = b"0-0"
        self._tasks: list[asyncio.Task[None]] = []
        self._reader_ok = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, from_id: str | bytes | None = None) -> None:
        """Find where the reply stream ends and start the submitter and the reader.

        With ``from_id`` (a reply-stream entry id, such as an earlier :attr:`position`) the
        reader starts after that entry instead, so the events of adopted requests written
        since then are read too. Raises :class:`QueueError` when Redis cannot be reached.
        """
        if self._tasks:
            return
        if from_id is None:
            self._last_id = await self._stream_end()
        else:
            self._last_id = from_id.encode() if isinstance(from_id, str) else from_id
        try:
            await _BOUNDED_XADD.load(self.redis)
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot load the queue's script into Redis: {e}") from e
        self._reader_ok = True
        self._tasks = [
            asyncio.create_task(self._submit_loop(), name=f"parley-submit-{self.adapter_id}"),
            asyncio.create_task(self._read_loop(), name=f"parley-replies-{self.adapter_id}"),
        ]
        log.info("queue client %s started, reading %s", self.adapter_id, self.reply_key)

    async def close(self) -> None:
        """Stop the background tasks; requests still waiting end with an ``unavailable`` error."""
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        outbox, self._outbox = self._outbox, []
        _fail(outbox, QueueError("the queue client was closed"))
        for request_id, box in list(self._mailboxes.items()):
            box.put(
                Error(
                    request_id=request_id,
                    seq=box.last_seq + 1,
                    code="unavailable",
                    message=CLOSED_MESSAGE,
                )
            )
        self._mailboxes.clear()

    async def __aenter__(self) -> ParleyClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def healthy(self) -> bool:
        """Started, and the reader's last Redis call succeeded (for readiness checks)."""
        return bool(self._tasks) and self._reader_ok

    @property
    def in_flight(self) -> int:
        """Requests (streamed or adopted) still waiting for their final event."""
        return len(self._mailboxes)

    @property
    def position(self) -> str:
        """The id of the last reply-stream entry the reader has passed (before it reads one,
        where it started). Every event of a request submitted after this was read comes
        after it, so ``start(from_id=position)`` of a later client sees them all."""
        return self._last_id.decode()

    # -- submitting --------------------------------------------------------------------------

    async def submit(self, request: ChatRequest | ControlRequest) -> None:
        """Append ``request`` to its shard's request stream.

        Raises :class:`QueueFull` when that stream is at its bound (nothing was appended) and
        :class:`QueueError` when Redis fails.
        """
        if not self._tasks:
            raise QueueError("ParleyClient is not started; use `async with` or await start()")
        shard = keys.shard_for(request.conversation, self.settings.shards)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outbound(keys.request_stream(shard), wire.encode(request), done))
        self._outbox_ready.set()
        await done

    async def _submit_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[_Outbound]) -> None:
        """Append ``batch`` in one round trip and settle every submitter's future."""
        by_stream: dict[str, list[_Outbound]] = {}
        for item in batch:
            by_stream.setdefault(item.stream, []).append(item)
        max_len = self.settings.max_stream_len
        calls: list[Call] = [
            (_BOUNDED_XADD, [stream], [max_len, keys.FIELD, *(item.payload for item in items)])
            for stream, items in by_stream.items()
        ]
        try:
            if len(calls) == 1:  # the common case at light load: no pipeline needed
                added_counts = [await _BOUNDED_XADD(self.redis, *calls[0][1:])]
            else:
                added_counts = await call_all(self.redis, calls)
        except asyncio.CancelledError:  # closing: nobody may wait for these forever
            _fail(batch, QueueError("the queue client was closed"))
            raise
        except Exception as e:  # settle every future whatever failed; the loop goes on
            error = QueueError(f"could not enqueue {len(batch)} request(s): {e}")
            error.__cause__ = e
            _fail(batch, error)
            return
        for items, added in zip(by_stream.values(), added_counts, strict=True):
            for i, item in enumerate(items):
                if item.done.done():  # the submitter was cancelled
                    continue
                if i < int(added):
                    item.done.set_result(None)
                else:
                    item.done.set_exception(QueueFull(f"{item.stream} is full"))

    # -- receiving ---------------------------------------------------------------------------

    async def stream(
        self, request: ChatRequest | ControlRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[ReplyEvent]:
        """Submit ``request`` and yield its reply events, ending after the final one.

        A full queue yields one ``Error(code="busy")``; no event for ``timeout_s`` yields
        ``Error(code="unavailable")``. Redis failures while submitting raise
        :class:`QueueError`. A request whose id is already in flight raises
        :class:`QueueError` (the platform delivered the same message twice).
        """
        box = self._open_mailbox(request.id)
        try:
            try:
                await self.submit(request)
            except QueueFull:
                yield Error(request_id=request.id, seq=0, code="busy", message=BUSY_MESSAGE)
                return
            async for event in self._receive(request.id, box, timeout_s):
                yield event
        finally:
            if self._mailboxes.get(request.id) is box:
                del self._mailboxes[request.id]

    def adopt(
        self, request_id: str, *, timeout_s: float | None = None
    ) -> AsyncIterator[ReplyEvent]:
        """The reply events of ``request_id``, submitted earlier by a process with this
        adapter id, as :meth:`stream` yields them, without submitting it again.

        Its mailbox opens now: adopt before :meth:`start` (with a ``from_id`` at or before
        where its events begin) so that no event read at the start is dropped, and iterate
        the result to its end (or close the client). Raises :class:`QueueError` if
        ``request_id`` is already in flight here.
        """
        box = self._open_mailbox(request_id)

        async def events() -> AsyncIterator[ReplyEvent]:
            try:
                async for event in self._receive(request_id, box, timeout_s):
                    yield event
            finally:
                if self._mailboxes.get(request_id) is box:
                    del self._mailboxes[request_id]

        return events()

    async def _receive(
        self, request_id: str, box: _Mailbox, timeout_s: float | None
    ) -> AsyncIterator[ReplyEvent]:
        """``box``'s events up to the final one; ``unavailable`` after ``timeout_s`` of none."""
        while True:
            try:
                event = await box.get(timeout_s)
            except TimeoutError:
                log.warning("request %s: no reply event for %.1f s", request_id, timeout_s)
                yield Error(
                    request_id=request_id,
                    seq=box.last_seq + 1,
                    code="unavailable",
                    message=UNAVAILABLE_MESSAGE,
                )
                return
            yield event
            if wire.is_final(event):
                return

    async def reply(
        self, request: ChatRequest | ControlRequest, *, timeout_s: float | None = None
    ) -> ReplyEvent:
        """Submit ``request`` and return only its final event (``Done`` or ``Error``)."""
        final: ReplyEvent | None = None
        async for event in self.stream(request, timeout_s=timeout_s):
            final = event
        assert final is not None and wire.is_final(final)
        return final

    def _open_mailbox(self, request_id: str) -> _Mailbox:
        if request_id in self._mailboxes:
            raise QueueError(f"request {request_id} is already in flight")
        box = _Mailbox()
        self._mailboxes[request_id] = box
        return box

    async def _stream_end(self) -> bytes:
        """The id of the reply stream's last entry, so reading starts after it."""
        try:
            last = await self.redis.xrevrange(self.reply_key, count=1)
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot read {self.reply_key}: {e}") from e
        entry_id = last[0][0] if last else None
        if entry_id is None:
            return b"0-0"
        return entry_id.encode() if isinstance(entry_id, str) else entry_id

    async def _read_loop(self) -> None:
        """Read the reply stream forever; Redis errors are retried with backoff."""
        backoff_s = RETRY_MIN_S
        while True:
            try:
                response = await self.redis.xread(
                    {self.reply_key: self._last_id}, count=READ_COUNT, block=READ_BLOCK_MS
                )
            except (RedisError, OSError) as e:
                self._reader_ok = False
                log.warning(
                    "reading %s failed (%s); retrying in %.2f s", self.reply_key, e, backoff_s
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RETRY_MAX_S)
                continue
            except Exception:  # never die silently: log, back off, go on
                self._reader_ok = False
                log.exception("unexpected error reading %s", self.reply_key)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RETRY_MAX_S)
                continue
            self._reader_ok = True
            backoff_s = RETRY_MIN_S
            for _stream, entries in stream_entries(response):
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    self._route(entry_id, fields or {})

    def _route(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Put the events of one reply-stream entry into their requests' mailboxes."""
        try:
            events = wire.decode_events(fields.get(_EVENTS_FIELD, b""))
        except WireError as e:
            log.warning("dropping reply entry %r on %s: %s", entry_id, self.reply_key, e)
            return
        for event in events:
            self._route_event(event)

    def _route_event(self, event: wire.ReplyEvent) -> None:
        """Put one event into its request's mailbox, or drop it."""
        box = self._mailboxes.get(event.request_id)
        if box is None:
            log.debug(
                "dropping %s event for unknown request %s", type(event).__name__, event.request_id
            )
            return
        if not self._current_attempt(box, event):
            return
        if event.seq in box.seen:
            log.debug("dropping duplicate event %s/%d", event.request_id, event.seq)
            return
        box.seen.add(event.seq)
        box.last_seq = max(box.last_seq, event.seq)
        if isinstance(event, wire.Delta):
            if box.streamed and box.streamed != event.attempt:
                # Deltas of an earlier attempt were passed on; this attempt's would continue
                # that text with another one's. Its final event carries its whole text.
                return
            box.streamed = event.attempt
        box.put(event)
        if wire.is_final(event):
            # Later copies of this request's events are now "unknown" and dropped.
            del self._mailboxes[event.request_id]

    @staticmethod
    def _current_attempt(box: _Mailbox, event: wire.ReplyEvent) -> bool:
        """Whether ``event`` belongs to the latest attempt at its request (a reclaimed request
        is answered again; the attempt it was taken from may still be writing)."""
        if event.attempt < box.attempt:
            log.debug("dropping event of stale attempt %d of %s", event.attempt, event.request_id)
            return False
        if event.attempt > box.attempt:
            if box.attempt:
                log.info(
                    "request %s: attempt %d takes over from attempt %d",
                    event.request_id,
                    event.attempt,
                    box.attempt,
                )
            box.attempt = event.attempt
            box.seen.clear()  # each attempt numbers its events from 0
        return True


def _fail(batch: list[_Outbound], error: QueueError) -> None:
    for item in batch:
        if not item.done.done():
            item.done.set_exception(error)
