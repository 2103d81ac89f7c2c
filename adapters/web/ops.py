"""Operations endpoints: ``/healthz``, ``/readyz`` and ``/metrics``; engine heartbeats.

``/healthz`` is liveness: 200 whenever the process serves HTTP. ``/readyz`` is readiness for a
load balancer: 200 only when Redis answers PING, an engine heartbeat under
:data:`HEARTBEAT_FRESH_S` old exists, and such an engine reports a loaded model; else 503 with
JSON naming the failed check. ``/metrics`` is the Prometheus text of the process's default
registry (in ``parley run`` the engine's metrics are in it too).

Engine heartbeats are read with :func:`bot.engines.read_heartbeats`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from bot.engines import HEARTBEAT_FRESH_S, Heartbeat, read_heartbeats
from bot.errors import QueueError
from bot.redis import Redis, ping

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0


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
