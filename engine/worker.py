"""The engine worker's event-loop side: queue in, Redis out, the model in its own thread.

A request's path through the worker::

    read (XREADGROUP) -> hold back while its conversation has one in flight
      -> prepare (history + spilled state from Redis) -> scheduler (torch thread)
      -> outputs -> events (delta / done / error) -> write (reply stream + log + ack)

The torch thread never calls Redis and this loop never runs a model step.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from bot import keys
from bot.queue import Delivery, Outgoing, RequestConsumer, cancel_and_wait
from bot.settings import Settings
from bot.store import ConversationStore
from bot.wire import ChatRequest, Delta, Done, Error, Exchange, ReplyEvent, Turn
from engine.scheduler import Scheduler
from engine.work import Applied, Control, Failed, Finished, Output, Progress, Spill, Work

log = logging.getLogger(__name__)

BUSY_MESSAGE = "Parley is busy right now — please try again in a moment."


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
        self._outputs: asyncio.Queue[list[Output]] = asyncio.Queue()
        self._seq: dict[str, int] = {}
        self._in_flight: dict[str, str] = {}  # conversation -> request id
        self._held: dict[str, deque[Delivery]] = defaultdict(deque)
        self._held_count = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight) + self._held_count

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain what is in flight and return."""
        await self._consumer.ensure_groups()
        loop = asyncio.get_running_loop()
        torch_stop = threading.Event()

        def emit(outputs: list[Output]) -> None:
            loop.call_soon_threadsafe(self._outputs.put_nowait, outputs)

        torch_thread = threading.Thread(
            target=self._scheduler.run, args=(emit, torch_stop), name="parley-torch", daemon=True
        )
        torch_thread.start()
        writer = asyncio.create_task(self._write_loop(), name="engine-writer")
        heartbeat = asyncio.create_task(self._heartbeat_loop(stop), name="engine-heartbeat")
        try:
            await self._read_loop(stop)
            await self._drain(timeout_s=30.0)
        finally:
            torch_stop.set()
            await asyncio.to_thread(torch_thread.join, 10.0)
            await cancel_and_wait([writer, heartbeat])
            await self._redis.hdel(keys.ENGINES, self._worker_id)

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self, stop: asyncio.Event) -> None:
        limit = self._settings.engine.max_batch + self._settings.engine.max_waiting
        while not stop.is_set():
            try:
                deliveries = await self._consumer.read(
                    count=max(1, min(256, limit)), block_ms=self._settings.engine.read_block_ms
                )
            except Exception:
                log.exception("reading requests failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if deliveries:
                await self._admit(deliveries, limit)

    async def _admit(self, deliveries: Sequence[Delivery], limit: int) -> None:
        ready: list[Delivery] = []
        busy: list[Delivery] = []
        for d in deliveries:
            conv = d.request.conversation
            if self.in_flight >= limit:
                busy.append(d)
            elif conv in self._in_flight:
                self._held[conv].append(d)  # one request in flight per conversation
                self._held_count += 1
            else:
                self._in_flight[conv] = d.request.id
                ready.append(d)
        if busy:
            await self._consumer.write([self._error_out(d, "busy", BUSY_MESSAGE) for d in busy])
        if ready:
            await self._dispatch(ready)

    async def _dispatch(self, deliveries: Sequence[Delivery]) -> None:
        """Fetch what each request needs from Redis, then hand it to the torch thread."""
        chats = [d for d in deliveries if isinstance(d.request, ChatRequest)]
        prepared = await self._prepare(chats)
        received = time.monotonic()
        for d in deliveries:
            req = d.request
            if isinstance(req, ChatRequest):
                history, spilled = prepared[req.id]
                self._scheduler.submit(Work(d, req, history, spilled, received))
            else:
                self._scheduler.submit(Control(d, req))

    async def _prepare(
        self, deliveries: Sequence[Delivery]
    ) -> dict[str, tuple[tuple[Turn, ...], bytes | None]]:
        stored = await self._store.load([d.request.conversation for d in deliveries])
        prepared: dict[str, tuple[tuple[Turn, ...], bytes | None]] = {}
        for d in deliveries:
            req = d.request
            assert isinstance(req, ChatRequest)
            conv = stored[req.conversation]
            history = req.history if req.history is not None else conv.history
            prepared[req.id] = (history, conv.spilled)
        return prepared

    # -- writing -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            outputs = await self._outputs.get()
            while not self._outputs.empty():  # coalesce whatever else is ready
                outputs.extend(self._outputs.get_nowait())
            try:
                await self._write(outputs)
            except Exception:
                log.exception("writing %d outputs failed", len(outputs))

    async def _write(self, outputs: Sequence[Output]) -> None:
        items: list[Outgoing] = []
        histories: list[tuple[str, str, Turn, Turn]] = []
        spills: list[Spill] = []
        finished: list[Delivery] = []
        for out in outputs:
            if isinstance(out, Progress):
                items.append(Outgoing([self._delta(out)], out.work.request.reply_to))
            elif isinstance(out, Finished):
                items.append(self._finished_out(out))
                req = out.work.request
                histories.append(
                    (req.conversation, req.user, Turn("user", req.text), Turn("bot", out.done.text))
                )
                finished.append(out.work.delivery)
                self._log_request(out)
            elif isinstance(out, Failed):
                d = out.work.delivery
                items.append(self._error_out(d, out.error.code, out.error.message))
                finished.append(d)
            elif isinstance(out, Applied):
                d = out.control.delivery
                await self._apply_control(out.control)
                items.append(self._done_out(d, out.message))
                finished.append(d)
            else:
                spills.append(out)
        # One transaction: a reply is acknowledged together with its history turns, so a
        # crash never leaves a stored exchange whose request is answered again.
        stored = (
            functools.partial(self._queue_store, histories, spills) if histories or spills else None
        )
        await self._consumer.write(items, also=stored)
        for d in finished:
            await self._release(d)

    def _queue_store(
        self,
        histories: Sequence[tuple[str, str, Turn, Turn]],
        spills: Sequence[Spill],
        pipe: Pipeline,
    ) -> None:
        """Queue the history turns of finished replies and the spilled states into ``pipe``."""
        for conv, user, user_turn, bot_turn in histories:
            self._store.append_exchange(pipe, conv, user, user_turn, bot_turn)
        for spill in spills:
            self._store.spill(pipe, spill.conversation, spill.data)

    async def _apply_control(self, control: Control) -> None:
        """Delete what the store holds for a reset conversation, or for a forgotten user."""
        req = control.request
        if req.command == "forget" and req.user:
            await self._store.forget(req.user, also=[req.conversation])
        else:
            await self._store.reset(req.conversation)

    async def _release(self, delivery: Delivery) -> None:
        """A request is done: let the next held one of its conversation go."""
        conv = delivery.request.conversation
        self._seq.pop(delivery.request.id, None)
        if self._in_flight.get(conv) == delivery.request.id:
            del self._in_flight[conv]
        held = self._held.get(conv)
        if held:
            nxt = held.popleft()
            self._held_count -= 1
            if not held:
                del self._held[conv]
            self._in_flight[conv] = nxt.request.id
            await self._dispatch([nxt])

    def _next_seq(self, request_id: str) -> int:
        seq = self._seq.get(request_id, 0)
        self._seq[request_id] = seq + 1
        return seq

    def _delta(self, out: Progress) -> ReplyEvent:
        rid = out.work.request.id
        return Delta(request_id=rid, seq=self._next_seq(rid), text=out.text)

    def _finished_out(self, out: Finished) -> Outgoing:
        req = out.work.request
        done = msgspec.structs.replace(out.done, seq=self._next_seq(req.id))
        exchange = Exchange(
            request_id=req.id,
            conversation=req.conversation,
            platform=req.platform,
            user=req.user,
            prompt=req.text,
            reply=done.text,
            model_version=done.model_version,
            created_ms=req.created_ms or int(time.time() * 1000),
        )
        return Outgoing([done], req.reply_to, ack=out.work.delivery, exchange=exchange)

    def _error_out(self, d: Delivery, code: str, message: str) -> Outgoing:
        rid = d.request.id
        error = Error(request_id=rid, seq=self._next_seq(rid), code=code, message=message)  # type: ignore[arg-type]
        return Outgoing([error], d.request.reply_to, ack=d)

    def _done_out(self, d: Delivery, message: str) -> Outgoing:
        rid = d.request.id
        done = Done(request_id=rid, seq=self._next_seq(rid), text=message, finish_reason="done")
        return Outgoing([done], d.request.reply_to, ack=d)

    def _log_request(self, out: Finished) -> None:
        d = out.done
        log.info(
            "request %s conv=%s queue_ms=%.1f ttft_ms=%.1f total_ms=%.1f tokens=%d+%d",
            out.work.request.id,
            out.work.request.conversation,
            d.queue_ms,
            d.ttft_ms,
            d.total_ms,
            d.prompt_tokens,
            d.completion_tokens,
        )
        log.debug(
            "request %s text=%.80r reply=%.80r", out.work.request.id, out.work.request.text, d.text
        )

    # -- draining and heartbeats -------------------------------------------------------

    async def _drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning(
                "stopping with %d requests unanswered; they will be reclaimed", self.in_flight
            )

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        last_tokens, last_s = self._scheduler.stats.tokens_generated, time.monotonic()
        while not stop.is_set():
            stats = self._scheduler.stats
            now = time.monotonic()
            tokens_per_s = (stats.tokens_generated - last_tokens) / max(now - last_s, 1e-3)
            last_tokens, last_s = stats.tokens_generated, now
            beat = {
                "tokens_per_s": round(tokens_per_s, 1),
                "worker": self._worker_id,
                "model_version": stats.model_version,
                "time": time.time(),
                "running": stats.running,
                "waiting": stats.waiting + self._held_count,
                "tokens_generated": stats.tokens_generated,
                "cache_hits": stats.cache_hits,
                "cache_queries": stats.cache_queries,
                **stats.extra,
            }
            try:
                await self._redis.hset(keys.ENGINES, self._worker_id, json.dumps(beat))
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            await asyncio.sleep(self._settings.engine.heartbeat_s)
