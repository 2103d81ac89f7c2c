"""Talking to the trainer service from anywhere: send a request, read its answers.

A request goes onto :data:`bot.keys.TRAINER_REQUESTS`; the trainer answers on a stream of the
request's own (:func:`bot.keys.trainer_replies`), which it expires after a day. Reading that
stream from its start means an answer written before the reader got there is not missed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, cast

from redis.exceptions import RedisError

from bot import keys, wire
from bot.errors import QueueError, WireError
from bot.redis import Redis
from bot.wire import Feedback, JobUpdate, TrainerMessage, TrainerReply

TRAINER_STREAM_LEN = 10_000
"""Approximate bound of the trainer request stream."""
READ_BLOCK_MS = 1_000


def now_ms() -> int:
    return int(time.time() * 1000)


class TrainerClient:
    """Sends :data:`~bot.wire.TrainerMessage` and follows the answers; Redis failures raise
    :class:`QueueError`."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def send(self, message: TrainerMessage) -> None:
        try:
            await self.redis.xadd(
                keys.TRAINER_REQUESTS,
                {keys.FIELD: wire.encode(message)},
                maxlen=TRAINER_STREAM_LEN,
                approximate=True,
            )
        except (RedisError, OSError) as e:
            raise QueueError(f"cannot reach the trainer's request stream: {e}") from e

    async def feedback(self, feedback: Feedback) -> None:
        """Record a 👍/👎 on a reply; the trainer stores it with the archived exchange."""
        await self.send(feedback)

    async def answers(
        self,
        request_id: str,
        *,
        first_timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
    ) -> AsyncIterator[TrainerReply | JobUpdate]:
        """Every answer to ``request_id`` in order, ending after a final one (a
        :class:`TrainerReply`, or a :class:`JobUpdate` with ``final``). Ends early, without
        an error, when the first answer takes longer than ``first_timeout_s`` or a later one
        longer than ``idle_timeout_s`` (``None``: wait as long as it takes)."""
        stream = keys.trainer_replies(request_id)
        last = b"0-0"
        timeout_s = first_timeout_s
        while True:
            entries = await self._next(stream, last, timeout_s)
            if not entries:
                return
            timeout_s = idle_timeout_s
            for entry_id, fields in entries:
                last = entry_id
                try:
                    answer = wire.decode_trainer_answer(fields.get(keys.FIELD.encode(), b""))
                except WireError:
                    continue
                yield answer
                if isinstance(answer, TrainerReply) or answer.final:
                    return

    async def _next(
        self, stream: str, last: bytes, timeout_s: float | None
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The entries after ``last``; empty when none came within ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            block = READ_BLOCK_MS
            if deadline is not None:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    return []
                block = max(1, min(block, left_ms))
            try:
                response = await self.redis.xread({stream: last}, count=100, block=block)
            except (RedisError, OSError) as e:
                raise QueueError(f"cannot read the trainer's answers: {e}") from e
            entries: list[tuple[bytes, dict[bytes, bytes]]] = []
            for _name, found in cast(list[Any], response or []):
                entries.extend(found)
            if entries:
                return entries

    async def ask(
        self, message: TrainerMessage, *, timeout_s: float
    ) -> TrainerReply | JobUpdate | None:
        """Send ``message`` and return the trainer's first answer (``None``: no answer in
        ``timeout_s``; the request stays queued for when the trainer runs)."""
        assert not isinstance(message, Feedback), "feedback gets no answer"
        await self.send(message)
        async for answer in self.answers(message.id, first_timeout_s=timeout_s):
            return answer
        return None
