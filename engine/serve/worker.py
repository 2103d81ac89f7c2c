"""The engine worker: requests from the queue, replies to it, the model in its own thread.

A request's path through the worker, one named step each::

    read      RequestConsumer.read                     -> deliveries
    admit     one request per conversation at a time   -> ready (the rest held, or refused)
    prepare   ConversationStore.load                   -> Work (request, history, spilled state)
    schedule  Scheduler, in the torch thread           -> outputs (progress, finished, failed…)
    write     ReplyEvents.batch, then one transaction  -> reply events, log, history, acks
    release   Admission.release                        -> the conversation's next held request

A regeneration (``ChatRequest.regenerates``: the safety filter blocked a reply and asks again)
is prepared without the blocked exchange in its history, so its prompt never contains the
blocked reply (and no cached state that consumed it matches), and its write replaces that
exchange in the stored history instead of appending.

Redis is reached only through ``bot/``: the queue (:class:`RequestConsumer`), the
conversation store (:class:`ConversationStore`) and the heartbeats (:mod:`bot.engines`), all
of which raise :class:`QueueError`. The torch thread never calls Redis and this loop never
runs a model step. A batch whose write fails still releases its conversations; its requests
stay pending in Redis and are handed out again by the consumer's next claim pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from bot import engines
from bot.errors import QueueError
from bot.queue import Delivery, RequestConsumer, cancel_and_wait
from bot.settings import Settings
from bot.store import ConversationStore
from bot.wire import ChatRequest, Heartbeat
from engine.serve.admission import Admission
from engine.serve.events import Batch, ReplyEvents
from engine.serve.scheduler import Scheduler
from engine.serve.work import Control, Finished, Output, Work

log = logging.getLogger(__name__)

READ_RETRY_S = 1.0
"""Pause after a failed read before the next (Redis restarting, say)."""
DRAIN_TIMEOUT_S = 30.0
"""How long a stopping worker waits for the replies in flight."""


class EngineWorker:
    """Serves requests from the queue with one :class:`Scheduler` until stopped."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        consumer: RequestConsumer,
        scheduler: Scheduler,
        worker_id: str,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._consumer = consumer
        self._scheduler = scheduler
        self._worker_id = worker_id
        self._store = ConversationStore(redis, ttl_s=settings.engine.state_ttl_s)
        self._admission = Admission(settings.engine.max_batch + settings.engine.max_waiting)
        self._events = ReplyEvents()
        self._outputs: asyncio.Queue[list[Output]] = asyncio.Queue()

    @property
    def in_flight(self) -> int:
        """Requests read and not yet answered (running or held)."""
        return self._admission.in_flight

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain what is in flight and return."""
        await self._consumer.ensure_groups()
        torch_stop = threading.Event()
        torch_thread = self._start_torch_thread(torch_stop)
        writer = asyncio.create_task(self._write_loop(), name="engine-writer")
        heartbeat = asyncio.create_task(self._heartbeat_loop(stop), name="engine-heartbeat")
        try:
            await self._read_loop(stop)
            if not await self._admission.wait_idle(DRAIN_TIMEOUT_S):
                log.warning("stopping with %d requests unanswered (reclaimable)", self.in_flight)
        finally:
            torch_stop.set()
            await asyncio.to_thread(torch_thread.join, 10.0)
            await cancel_and_wait([writer, heartbeat])
            try:
                await engines.clear_heartbeat(self._redis, self._worker_id)
            except QueueError as e:
                log.warning("%s", e)

    def _start_torch_thread(self, stop: threading.Event) -> threading.Thread:
        loop = asyncio.get_running_loop()

        def emit(outputs: list[Output]) -> None:
            loop.call_soon_threadsafe(self._outputs.put_nowait, outputs)

        thread = threading.Thread(
            target=self._scheduler.run, args=(emit, stop), name="parley-torch", daemon=True
        )
        thread.start()
        return thread

    # -- read and admit ----------------------------------------------------------------

    async def _read_loop(self, stop: asyncio.Event) -> None:
        count = max(1, min(256, self._admission.limit))
        while not stop.is_set():
            try:
                deliveries = await self._consumer.read(
                    count=count, block_ms=self._settings.engine.read_block_ms
                )
            except QueueError as e:
                log.warning("reading requests failed (%s); retrying", e)
                await asyncio.sleep(READ_RETRY_S)
                continue
            if deliveries:
                await self._admit(deliveries)

    async def _admit(self, deliveries: Sequence[Delivery]) -> None:
        admitted = self._admission.admit(deliveries)
        if admitted.refused:
            busy = [self._events.busy(d) for d in admitted.refused]
            try:
                await self._consumer.write(busy)
            except QueueError as e:
                log.warning("answering %d requests busy failed (%s)", len(busy), e)
        if admitted.ready:
            await self._prepare_and_schedule(admitted.ready)

    # -- prepare and schedule ----------------------------------------------------------

    async def _prepare_and_schedule(self, deliveries: Sequence[Delivery]) -> None:
        try:
            items = await self._prepare(deliveries)
        except QueueError as e:
            log.warning("preparing %d requests failed (%s); left for reclaim", len(deliveries), e)
            self._consumer.forget(deliveries)
            await self._release(deliveries)
            return
        for item in items:
            self._scheduler.submit(item)

    async def _prepare(self, deliveries: Sequence[Delivery]) -> list[Work | Control]:
        """Each request with what the model needs: the stored history and spilled state."""
        chats = [d for d in deliveries if isinstance(d.request, ChatRequest)]
        stored = await self._store.load([d.request.conversation for d in chats])
        received_s = time.monotonic()
        items: list[Work | Control] = []
        for d in deliveries:
            req = d.request
            if isinstance(req, ChatRequest):
                conv = stored[req.conversation]
                # A regeneration: the blocked exchange is neither prompt nor kept history.
                history, replaces = conv.without(req.regenerates)
                if req.history is not None:
                    history = req.history
                items.append(Work(d, req, history, conv.spilled, received_s, replaces))
            else:
                items.append(Control(d, req))
        return items

    # -- write and release -------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            outputs = await self._outputs.get()
            while not self._outputs.empty():  # coalesce whatever else is ready
                outputs.extend(self._outputs.get_nowait())
            await self._write(self._events.batch(outputs))

    async def _write(self, batch: Batch) -> None:
        """Apply the batch's control requests, then write it in one transaction; release
        its finished requests either way (a failed write leaves them for reclaim)."""
        try:
            lost = await self._consumer.lost(batch.finished)
            if lost:  # this worker stalled; another answers these (no double reply)
                log.warning("%d requests were taken over by another worker", len(lost))
                batch = batch.without(lost)
            for control in batch.controls:
                await self._apply_control(control)
            await self._consumer.write(batch.items, also=self._store_writes(batch))
        except Exception as e:  # QueueError expected (Redis restarting); anything else a bug
            log.log(
                logging.WARNING if isinstance(e, QueueError) else logging.ERROR,
                "writing %d reply items failed (%s); %d requests left for reclaim",
                len(batch.items),
                e,
                len(batch.finished),
                exc_info=not isinstance(e, QueueError),
            )
            self._consumer.forget(batch.finished)
        else:
            for out in batch.replies:
                _log_reply(out)
        await self._release(batch.finished)

    def _store_writes(self, batch: Batch) -> Callable[[Pipeline], None] | None:
        """What the store adds to the reply's transaction: so a crash never leaves a stored
        exchange whose request is then answered again."""
        if not batch.exchanges and not batch.spills:
            return None

        def queue(pipe: Pipeline) -> None:
            for x in batch.exchanges:
                self._store.append_exchange(
                    pipe,
                    x.conversation,
                    x.user,
                    x.prompt,
                    x.reply,
                    request_id=x.answers,
                    replaces=x.replaces,
                )
            for spill in batch.spills:
                self._store.spill(pipe, spill.conversation, spill.data)

        return queue

    async def _apply_control(self, control: Control) -> None:
        """Delete what the store holds for a reset conversation, or for a forgotten user;
        amend a stored reply."""
        req = control.request
        if req.command == "forget" and req.user:
            await self._store.forget(req.user, also=[req.conversation])
        elif req.command == "amend":
            if not await self._store.amend(req.conversation, req.target, req.text):
                log.info("request %s: no stored reply to %s to amend", req.id, req.target)
        else:
            await self._store.reset(req.conversation)

    async def _release(self, deliveries: Sequence[Delivery]) -> None:
        """These requests are done: let each conversation's next held request go."""
        following = []
        for d in deliveries:
            self._events.end(d.request.id)
            nxt = self._admission.release(d)
            if nxt is not None:
                following.append(nxt)
        if following:
            await self._prepare_and_schedule(following)

    # -- heartbeats --------------------------------------------------------------------

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        last_tokens, last_s = self._scheduler.stats.tokens_generated, time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            beat = self._heartbeat(last_tokens, now - last_s)
            last_tokens, last_s = beat.tokens_generated or 0, now
            try:
                await engines.publish_heartbeat(self._redis, beat)
                await self._refresh_consent()
            except QueueError as e:
                log.warning("%s", e)
            with contextlib.suppress(TimeoutError):  # wake at once when stopping
                await asyncio.wait_for(stop.wait(), self._settings.engine.heartbeat_s)

    async def _refresh_consent(self) -> None:
        """Remembered replies leave out whoever is opted out now (a reply mode that has them)."""
        if self._scheduler.replies.mode != "generate":
            self._scheduler.replies.set_excluded(await self._store.opted_out_users())

    def _heartbeat(self, last_tokens: int, elapsed_s: float) -> Heartbeat:
        stats = self._scheduler.stats
        return Heartbeat(
            worker=self._worker_id,
            time=time.time(),
            model_version=stats.model_version,
            running=stats.running,
            waiting=stats.waiting + self._admission.held,
            tokens_per_s=round((stats.tokens_generated - last_tokens) / max(elapsed_s, 1e-3), 1),
            tokens_generated=stats.tokens_generated,
            cache_hits=stats.cache_hits,
            cache_queries=stats.cache_queries,
            cache_bytes=stats.cache_bytes,
        )


def _log_reply(out: Finished) -> None:
    """The one INFO line per answered request; its text only at DEBUG, truncated."""
    r, req = out.reply, out.work.request
    log.info(
        "request %s conv=%s queue_ms=%.1f ttft_ms=%.1f total_ms=%.1f tokens=%d+%d",
        req.id,
        req.conversation,
        r.queue_ms,
        r.ttft_ms,
        r.total_ms,
        r.prompt_tokens,
        r.completion_tokens,
    )
    log.debug("request %s text=%.80r reply=%.80r", req.id, req.text, r.text)
