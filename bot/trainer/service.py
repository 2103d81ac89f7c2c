"""The trainer service: archive the log, answer consent and feedback, run retrain jobs.

Two loops share one archive (on its own thread): the :class:`~bot.trainer.ingest.LogArchiver`
and the request loop below, which reads :data:`bot.keys.TRAINER_REQUESTS` as a member of the
trainers' group, handles each message and only then acknowledges it. A message that fails is
logged, answered with what went wrong, and acknowledged; the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from typing import Any, cast

from redis.exceptions import RedisError

from bot import keys, wire
from bot.archive import AsyncArchive
from bot.errors import ParleyError, QueueError, WireError
from bot.queue import cancel_and_wait
from bot.redis import Redis
from bot.registry import ModelRegistry
from bot.settings import Settings
from bot.store import ConversationStore
from bot.trainer.ingest import LogArchiver, ensure_group
from bot.trainer.jobs import RetrainJobs, answer
from bot.wire import Feedback, TrainerMessage, TrainerReply, TrainerRequest

log = logging.getLogger(__name__)

RETRAIN_MAX_AGE_S = 3600
"""A retrain request older than this when the trainer reads it is answered, not run (it was
sent while no trainer was running)."""
_FIELD = keys.FIELD.encode()


class TrainerService:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        *,
        registry: ModelRegistry | None = None,
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.consumer = settings.learning.trainer_id or socket.gethostname()
        self.archive = AsyncArchive(settings.archive_file)
        self.store = ConversationStore(redis, ttl_s=settings.engine.state_ttl_s)
        self.registry = registry or ModelRegistry.from_settings(settings)
        self.archiver = LogArchiver(
            redis,
            self.archive,
            self.store,
            settings.learning,
            consumer=self.consumer,
            claim_idle_ms=settings.redis.claim_idle_ms,
        )
        self.jobs = RetrainJobs(
            settings, redis, self.archive, self.store, self.registry, python=python
        )
        self._backlog = True

    async def start(self) -> None:
        """Open the archive (a bad path fails here, at start-up) and the consumer groups."""
        await self.archive.call(lambda a: a.total())
        await self.archiver.start()
        await ensure_group(self.redis, keys.TRAINER_REQUESTS)
        log.info("trainer %s: archiving to %s", self.consumer, self.settings.archive_file)

    async def close(self) -> None:
        """Stop a running job (its requesters are told) and close the archive."""
        await self.jobs.close()
        await self.archive.close()

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set; a running job is stopped and its requesters told."""
        await self.start()
        if ready is not None:
            ready.set()
        tasks = [
            asyncio.create_task(self.archiver.run(stop), name="trainer-archive"),
            asyncio.create_task(self._serve(stop), name="trainer-requests"),
        ]
        try:
            await stop.wait()
        finally:
            await cancel_and_wait(tasks)
            await self.close()

    async def _serve(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.step()
            except QueueError as e:
                log.warning("reading trainer requests failed (%s); retrying", e)
                await asyncio.sleep(1.0)

    async def step(self, block_ms: int = 1000) -> int:
        """Read, handle and acknowledge one batch of requests; returns how many."""
        entries = await self._read(block_ms)
        for entry_id, data in entries:
            try:
                message = wire.decode_trainer_message(data) if data is not None else None
            except WireError as e:
                log.warning("dropping unreadable trainer request %r: %s", entry_id, e)
                message = None
            if message is not None:
                await self._handle_safely(message)
            await self._ack(entry_id)
        return len(entries)

    async def _read(self, block_ms: int) -> list[tuple[bytes, bytes | None]]:
        start = "0" if self._backlog else ">"
        try:
            response = await self.redis.xreadgroup(
                keys.TRAINER_GROUP,
                self.consumer,
                {keys.TRAINER_REQUESTS: start},
                count=32,
                block=None if self._backlog else block_ms,
            )
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot read trainer requests: {e}") from e
        found: list[tuple[bytes, bytes | None]] = []
        for _stream, raw in cast(list[Any], response or []):
            found.extend((entry_id, (fields or {}).get(_FIELD)) for entry_id, fields in raw)
        if self._backlog and not found:
            self._backlog = False
        return found

    async def _ack(self, entry_id: bytes) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(keys.TRAINER_REQUESTS, keys.TRAINER_GROUP, entry_id)
                pipe.xdel(keys.TRAINER_REQUESTS, entry_id)
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot acknowledge trainer request {entry_id!r}: {e}") from e

    async def _handle_safely(self, message: TrainerMessage) -> None:
        try:
            await self.handle(message)
        except Exception as e:  # one bad request never stops the loop
            log.exception("trainer request failed: %r", message)
            if isinstance(message, TrainerRequest):
                reason = str(e) if isinstance(e, ParleyError) else type(e).__name__
                await answer(self.redis, message.id, TrainerReply(message.id, False, reason))

    async def handle(self, message: TrainerMessage) -> None:
        if isinstance(message, Feedback):
            value = message.value
            await self.archive.call(lambda a: a.set_feedback(message.request_id, value))
            log.info("feedback %+d on %s from %s", value, message.request_id, message.platform)
            return
        if message.command == "retrain":
            age_s = time.time() - message.created_ms / 1000
            if message.created_ms and age_s > RETRAIN_MAX_AGE_S:
                reply = f"not run: the request waited {age_s / 60:.0f} minutes for a trainer"
                await answer(self.redis, message.id, TrainerReply(message.id, False, reply))
                return
            log.info("retrain requested by %s user %s", message.platform, message.user)
            await self.jobs.request(message)
            return
        text = await self._consent(message)
        await answer(self.redis, message.id, TrainerReply(message.id, True, text))

    async def _consent(self, request: TrainerRequest) -> str:
        user = request.user
        if not user:
            raise ParleyError(f"/{request.command} needs a user")
        if request.command == "forget":
            forgotten = await self.archive.call(lambda a: a.forget(user))
            logged = await self.archiver.forget_log(user)
            await self.store.opt_out(user)
            log.info(
                "forgot %s: %d messages, %d replies, %d log entries",
                user,
                forgotten.messages,
                forgotten.replies,
                logged,
            )
            return (
                f"deleted {forgotten.messages} archived message(s) of yours, "
                f"{forgotten.replies} of my replies to them and {logged} waiting log entries"
            )
        if request.command == "optout":
            await self.archive.call(lambda a: a.opt_out(user))
            await self.store.opt_out(user)
            return "opted out"
        await self.archive.call(lambda a: a.opt_in(user))
        await self.store.opt_in(user)
        return "opted in"
