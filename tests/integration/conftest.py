"""Integration fixtures: a stub engine that answers through the real queue, and a client.

``echo_engine`` is for anyone testing an adapter without torch: it reads requests with a real
:class:`RequestConsumer` and answers each chat with one ``Delta`` and a ``Done`` whose text is
``answer(request)`` (default ``"echo: <text>"``); control requests get an empty ``Done``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from types import TracebackType

import pytest
import redis.asyncio as aioredis

from bot.errors import QueueError
from bot.queue import Delivery, Outgoing, ParleyClient, RequestConsumer, cancel_and_wait
from bot.settings import RedisSettings
from bot.wire import ChatRequest, Delta, Done, ReplyEvent, Request

log = logging.getLogger(__name__)


def echo(request: Request) -> str:
    return f"echo: {request.text}" if isinstance(request, ChatRequest) else ""


class EchoEngine:
    """A stub engine worker; ``served`` lists every delivery it answered, in order."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: RedisSettings,
        *,
        consumer: str = "echo",
        answer: Callable[[Request], str] = echo,
        read_block_ms: int = 20,
    ) -> None:
        self.consumer = RequestConsumer(redis, settings, consumer)
        self.answer = answer
        self.read_block_ms = read_block_ms
        self.served: list[Delivery] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EchoEngine:
        await self.consumer.ensure_groups()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    def reply_events(self, delivery: Delivery) -> list[ReplyEvent]:
        request, text = delivery.request, self.answer(delivery.request)
        if not text:
            return [Done(request_id=request.id, seq=0, text="", finish_reason="done")]
        return [
            Delta(request_id=request.id, seq=0, text=text),
            Done(request_id=request.id, seq=1, text=text),
        ]

    async def _run(self) -> None:
        while True:
            try:
                deliveries = await self.consumer.read(count=64, block_ms=self.read_block_ms)
                self.served.extend(deliveries)
                await self.consumer.write(
                    [Outgoing(self.reply_events(d), d.request.reply_to, ack=d) for d in deliveries]
                )
            except QueueError as e:
                log.warning("echo engine: %s", e)
                await asyncio.sleep(0.05)


@pytest.fixture
async def echo_engine(
    redis: aioredis.Redis, redis_settings: RedisSettings
) -> AsyncIterator[EchoEngine]:
    async with EchoEngine(redis, redis_settings) as engine:
        yield engine


@pytest.fixture
def echo_engine_cls() -> type[EchoEngine]:
    """The :class:`EchoEngine` class, for tests that need one with other settings or names."""
    return EchoEngine


@pytest.fixture
async def parley_client(
    redis: aioredis.Redis, redis_settings: RedisSettings
) -> AsyncIterator[ParleyClient]:
    """A started client of adapter ``"test"`` (the default ``reply_to`` of ``make_chat``)."""
    async with ParleyClient(redis, redis_settings, "test") as client:
        yield client
