"""Support for the web adapter's tests: a streaming stand-in engine, heartbeats, a real server.

Imported by ``test_web_*.py`` (``from conftest_web import ...``); its fixtures build on the
``redis`` and ``redis_settings`` fixtures of ``tests/conftest.py`` (a real Redis database that
is flushed per test).

:class:`StreamingEngine` answers through the real queue (:class:`bot.queue.RequestConsumer`),
like the shared ``echo_engine``, but sends each reply as several ``Delta`` events with small
sleeps between them, so tests can see a reply arrive piece by piece.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from adapters.web.admin import RetrainCallback, RollbackCallback
from adapters.web.app import create_app
from bot import keys
from bot.errors import QueueError
from bot.queue import Delivery, Outgoing, RequestConsumer
from bot.registry import ModelRegistry
from bot.settings import RedisSettings, Settings, WebSettings
from bot.wire import ChatRequest, ControlRequest, Delta, Done, Heartbeat, Request, encode_heartbeat

log = logging.getLogger(__name__)

ADAPTER_ID = "web-test"


def reply_for(text: str) -> str:
    return f"You said: {text}. Nice!"


def pieces(text: str, n: int) -> list[str]:
    """``text`` cut into ``n`` consecutive non-empty pieces (fewer if it is shorter)."""
    n = max(1, min(n, len(text)))
    size = -(-len(text) // n)
    return [text[i : i + size] for i in range(0, len(text), size)]


@dataclass
class StreamingEngine:
    """A stand-in engine worker: every chat is answered with ``deltas`` Delta events
    ``delay_s`` apart, then a Done carrying the whole text and token counts."""

    redis: aioredis.Redis
    settings: RedisSettings
    deltas: int = 4
    delay_s: float = 0.15
    answer: Callable[[ChatRequest], str] = lambda r: reply_for(r.text)
    finish_reason: str = "stop"
    model_version: str = "v1"
    requests: list[Request] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _loop: asyncio.Task[None] | None = None
    _stopping: bool = False

    async def __aenter__(self) -> StreamingEngine:
        self.consumer = RequestConsumer(self.redis, self.settings, "stand-in")
        await self.consumer.ensure_groups()
        self._loop = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Stop by flag, not by cancelling a blocked XREADGROUP: on Python 3.11 a cancel that
        # lands as the read's own timeout fires can come out as a TimeoutError (CPython
        # gh-102780), which a retrying loop would swallow and never end.
        self._stopping = True
        if self._loop is not None:
            await self._loop
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while not self._stopping:
            try:
                deliveries = await self.consumer.read(count=16, block_ms=20)
            except QueueError as e:
                log.warning("stand-in engine: %s", e)
                await asyncio.sleep(0.05)
                continue
            for delivery in deliveries:
                self.requests.append(delivery.request)
                task = asyncio.create_task(self._answer(delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _answer(self, delivery: Delivery) -> None:
        request = delivery.request
        if isinstance(request, ControlRequest):
            done = Done(request_id=request.id, seq=0, text="", finish_reason="done")
            await self.consumer.write([Outgoing([done], request.reply_to, ack=delivery)])
            return
        text = self.answer(request)
        seq = 0
        for piece in pieces(text, self.deltas):
            delta = Delta(request_id=request.id, seq=seq, text=piece)
            await self.consumer.write([Outgoing([delta], request.reply_to)])
            seq += 1
            await asyncio.sleep(self.delay_s)
        done = Done(
            request_id=request.id,
            seq=seq,
            text=text,
            finish_reason=self.finish_reason,  # type: ignore[arg-type]
            prompt_tokens=len(request.text.split()),
            completion_tokens=len(text.split()),
            model_version=self.model_version,
        )
        await self.consumer.write([Outgoing([done], request.reply_to, ack=delivery)])

    def chats(self) -> list[ChatRequest]:
        return [r for r in self.requests if isinstance(r, ChatRequest)]

    def controls(self) -> list[ControlRequest]:
        return [r for r in self.requests if isinstance(r, ControlRequest)]


async def write_heartbeat(
    redis: aioredis.Redis,
    worker: str = "engine-1",
    *,
    model_version: str = "v1",
    age_s: float = 0.0,
    **fields: Any,
) -> None:
    """Write an engine heartbeat the way engines do (:func:`bot.wire.encode_heartbeat`)."""
    beat = Heartbeat(worker=worker, model_version=model_version, time=time.time() - age_s, **fields)
    await redis.hset(keys.ENGINES, worker, encode_heartbeat(beat))


def tiny_png() -> bytes:
    """A valid 1x1 PNG, so the served file is a real image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = chunk(b"IHDR", (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0]))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
    return b"\x89PNG\r\n\x1a\n" + header + pixels + chunk(b"IEND", b"")


def add_version(models: Path, name: str, metrics: dict[str, Any], plot: bool) -> None:
    path = models / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "metrics.json").write_text(json.dumps(metrics))
    if plot:
        (path / "loss.png").write_bytes(tiny_png())


def make_settings(tmp_path: Path, redis_settings: RedisSettings, **web: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", redis=redis_settings, web=WebSettings(**web))


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    candidates: set[str] = set()
    with contextlib.suppress(OSError):
        candidates.update(
            info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        )
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        candidates.add(s.getsockname()[0])
    for address in sorted(candidates):
        if address.startswith("127.") or address == "0.0.0.0":
            continue
        with contextlib.suppress(OSError), socket.socket() as probe:
            probe.bind((address, 0))
            return str(address)
    return None


@contextlib.asynccontextmanager
async def serve(
    settings: Settings,
    redis: aioredis.Redis,
    *,
    host: str = "127.0.0.1",
    registry: ModelRegistry | None = None,
    on_retrain: RetrainCallback | None = None,
    on_rollback: RollbackCallback | None = None,
) -> AsyncIterator[str]:
    """The web app served on a real TCP port of ``host``; yields its base URL."""
    app = create_app(
        settings,
        redis,
        adapter_id=ADAPTER_ID,
        registry=registry or ModelRegistry(settings.models_dir),
        on_retrain=on_retrain,
        on_rollback=on_rollback,
    )
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def engine(
    redis: aioredis.Redis, redis_settings: RedisSettings
) -> AsyncIterator[StreamingEngine]:
    async with StreamingEngine(redis, redis_settings) as stand_in:
        yield stand_in
