"""Operations endpoints: ``/healthz``, ``/readyz`` and ``/metrics``; engine heartbeats.

``/healthz`` is liveness: 200 whenever the process serves HTTP. ``/readyz`` is readiness for a
load balancer: 200 only when Redis answers PING, an engine heartbeat under
:data:`HEARTBEAT_FRESH_S` old exists, and such an engine reports a loaded model; else 503 with
JSON naming the failed check. ``/metrics`` is the Prometheus text of the process's default
registry (in ``parley run`` the engine's metrics are in it too).

Engines write heartbeats into the Redis hash :data:`bot.keys.ENGINES` (worker id -> JSON);
:func:`read_heartbeats` is the one reader, shared with the admin dashboard.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from bot import keys
from bot.errors import QueueError
from bot.redis import Redis, ping

log = logging.getLogger(__name__)

HEARTBEAT_FRESH_S = 10.0
"""An engine whose last heartbeat is older than this is taken for dead."""
REDIS_TIMEOUT_S = 2.0


class Heartbeat(msgspec.Struct, frozen=True):
    """One engine worker's last report (see :data:`bot.keys.ENGINES`)."""

    worker: str
    time: float
    model_version: str = ""
    running: int = 0
    waiting: int = 0
    tokens_per_s: float = 0.0
    tokens_generated: int | None = None
    """A running total; the dashboard derives tokens/s from it when ``tokens_per_s`` is 0."""
    cache_hits: int = 0
    cache_queries: int = 0

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.time)

    def alive(self, now: float) -> bool:
        return self.age_s(now) < HEARTBEAT_FRESH_S


_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def read_heartbeats(redis: Redis) -> list[Heartbeat]:
    """Every engine's last heartbeat (alive or not), sorted by worker id.

    Entries that do not parse are logged and skipped; Redis failing raises :class:`QueueError`.
    """
    try:
        raw: dict[Any, Any] = await redis.hgetall(keys.ENGINES)
    except (RedisError, OSError) as e:
        raise QueueError(f"cannot read engine heartbeats: {e}") from e
    beats = []
    for worker, value in raw.items():
        try:
            beats.append(_heartbeat_decoder.decode(value))
        except msgspec.DecodeError as e:
            log.warning("unreadable heartbeat of engine %s: %s", _text(worker), e)
    return sorted(beats, key=lambda b: b.worker)


def readiness(redis_error: str | None, beats: Sequence[Heartbeat], now: float) -> dict[str, Any]:
    """The readiness report: each check's result and the first that failed (``failed``)."""
    alive = [b for b in beats if b.alive(now)]
    loaded = [b for b in alive if b.model_version]
    checks = {
        "redis": redis_error or "ok",
        "engine": f"{len(alive)} alive" if alive else _no_engine(beats, now),
        "model": (
            f"loaded ({', '.join(sorted({b.model_version for b in loaded}))})"
            if loaded
            else "no live engine reports a loaded model"
        ),
    }
    failed = next(
        (
            name
            for name, ok in (("redis", not redis_error), ("engine", alive), ("model", loaded))
            if not ok
        ),
        None,
    )
    return {"ready": failed is None, "failed": failed, "checks": checks}


def _no_engine(beats: Sequence[Heartbeat], now: float) -> str:
    if not beats:
        return "no engine heartbeat"
    newest = min(b.age_s(now) for b in beats)
    return f"no engine heartbeat in the last {HEARTBEAT_FRESH_S:g} s (newest {newest:.0f} s old)"


class OpsRoutes:
    """``/healthz``, ``/readyz``, ``/metrics``."""

    def __init__(self, redis: Redis, *, registry: CollectorRegistry = REGISTRY) -> None:
        self.redis = redis
        self.registry = registry

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(self, request: web.Request) -> web.Response:
        redis_error: str | None = None
        beats: list[Heartbeat] = []
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                await ping(self.redis)
                beats = await read_heartbeats(self.redis)
        except QueueError as e:
            redis_error = str(e)
        except TimeoutError:
            redis_error = f"Redis did not answer within {REDIS_TIMEOUT_S:g} s"
        report = readiness(redis_error, beats, time.time())
        return web.json_response(report, status=200 if report["ready"] else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
