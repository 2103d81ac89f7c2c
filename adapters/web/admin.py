"""The admin dashboard: ``/admin`` and its JSON API under ``/admin/api/``.

The page (``static/admin.html``) asks for the admin token in a form (or takes it from the
``#token=`` fragment of the login link ``parley run`` prints), keeps it in sessionStorage and
sends it as ``Authorization: Bearer`` to ``/admin/api/*``, which compares it with
``web.admin_token`` in constant time. With no token configured the dashboard is disabled:
``/admin/api/info`` says so and every other admin endpoint answers 403 with what to set.

``/admin/api/status`` gathers what an owner watches: the model versions (validation loss, loss
curve; the built-in starter model among them), the live version and whether there is one to
roll back to, training progress (:data:`bot.keys.TRAIN_PROGRESS`, the trainer service's latest
:class:`~bot.wire.JobUpdate`), queue depth per shard, engine workers alive, cache hit rate
and tokens/s (from the engine heartbeats). Retrain and rollback call the callbacks given to
the app factory; without one they answer 501.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from pydantic import SecretStr
from redis.exceptions import RedisError

from adapters.web.http import STATIC_DIR, ApiError, api_errors, decode_json, read_body
from bot import keys, wire
from bot.commands import RetrainCallback, RollbackCallback
from bot.engines import Heartbeat, read_heartbeats
from bot.errors import ParleyError, QueueError, WireError
from bot.redis import Redis
from bot.registry import ModelRegistry, ModelVersion
from bot.trainer.progress import describe
from bot.wire import JobUpdate

log = logging.getLogger(__name__)


DISABLED_MESSAGE = (
    "The admin dashboard is disabled: no admin token is configured. "
    "Set PARLEY_WEB__ADMIN_TOKEN and restart to enable it."
)


class RollbackBody(msgspec.Struct, frozen=True):
    version: str | None = None


def check_token(request: web.Request, token: SecretStr | None) -> None:
    """Pass, or raise a 403 (dashboard disabled) or 401 (wrong or missing token) ``ApiError``."""
    if token is None or not token.get_secret_value():
        raise ApiError(403, DISABLED_MESSAGE, code="admin_disabled")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        log.warning(
            "refused admin request %s %s from %s: wrong or missing admin token",
            request.method,
            request.path,
            request.remote,
        )
        raise ApiError(401, "Wrong or missing admin token.", code="invalid_admin_token")


def version_info(v: ModelVersion, live: str | None) -> dict[str, Any]:
    return {
        "version": v.version,
        "created": v.created,
        "live": v.version == live,
        "val_loss": v.validation_loss,
        "metrics": v.metrics,
        "has_loss_plot": v.loss_plot is not None,
        "builtin": v.builtin,
    }


class TokenRates:
    """Tokens/s of engines that report only a running total (``tokens_generated``): the
    difference between the last two heartbeats this process saw of each worker."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}
        self._rate: dict[str, float] = {}

    def fill(self, beats: Sequence[Heartbeat]) -> list[Heartbeat]:
        filled = []
        for beat in beats:
            if beat.tokens_per_s or beat.tokens_generated is None:
                filled.append(beat)
                continue
            previous = self._last.get(beat.worker)
            if previous is not None and beat.time > previous[0]:
                tokens = max(0, beat.tokens_generated - previous[1])
                self._rate[beat.worker] = tokens / (beat.time - previous[0])
            if previous is None or beat.time > previous[0]:
                self._last[beat.worker] = (beat.time, beat.tokens_generated)
            rate = self._rate.get(beat.worker, 0.0)
            filled.append(msgspec.structs.replace(beat, tokens_per_s=rate))
        return filled


def engine_info(beat: Heartbeat, now: float) -> dict[str, Any]:
    return {**msgspec.structs.asdict(beat), "age_s": beat.age_s(now), "alive": beat.alive(now)}


def engine_summary(beats: Sequence[Heartbeat], now: float) -> dict[str, Any]:
    alive = [b for b in beats if b.alive(now)]
    queries = sum(b.cache_queries for b in alive)
    return {
        "engines_alive": len(alive),
        "engines_known": len(beats),
        "tokens_per_s": sum(b.tokens_per_s for b in alive),
        "running": sum(b.running for b in alive),
        "waiting": sum(b.waiting for b in alive),
        "cache_hit_rate": sum(b.cache_hits for b in alive) / queries if queries else None,
    }


async def queue_depths(redis: Redis, shards: int) -> list[dict[str, int]]:
    """``XLEN`` of each shard's request and dead-letter streams."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for shard in range(shards):
                pipe.xlen(keys.request_stream(shard))
                pipe.xlen(keys.dead_letter_stream(shard))
            lengths: list[int] = await pipe.execute()
    except (RedisError, OSError) as e:
        raise QueueError(f"cannot read queue depths: {e}") from e
    return [
        {"shard": shard, "depth": lengths[2 * shard], "dead": lengths[2 * shard + 1]}
        for shard in range(shards)
    ]


async def training_progress(redis: Redis) -> dict[str, Any] | None:
    """The trainer's progress report, or ``None`` when there is none (or it is unreadable)."""
    try:
        raw = await redis.get(keys.TRAIN_PROGRESS)
    except (RedisError, OSError) as e:
        raise QueueError(f"cannot read training progress: {e}") from e
    if not raw:
        return None
    try:
        update = wire.decode_trainer_answer(raw if isinstance(raw, bytes) else raw.encode())
    except WireError:
        log.warning("unreadable training progress in %s", keys.TRAIN_PROGRESS)
        return None
    if not isinstance(update, JobUpdate):
        return None
    return {**msgspec.to_builtins(update), "text": describe(update)}


class AdminRoutes:
    """``/admin`` and ``/admin/api/*``."""

    def __init__(
        self,
        redis: Redis,
        registry: ModelRegistry,
        *,
        token: SecretStr | None,
        shards: int,
        on_retrain: RetrainCallback | None = None,
        on_rollback: RollbackCallback | None = None,
    ) -> None:
        self.redis = redis
        self.registry = registry
        self.token = token
        self.shards = shards
        self.on_retrain = on_retrain
        self.on_rollback = on_rollback
        self.token_rates = TokenRates()

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/admin", self.page)
        app.router.add_get("/admin/", self.page)
        app.router.add_get("/admin/api/info", self.info)
        app.router.add_get("/admin/api/status", api_errors(self.status))
        app.router.add_get("/admin/api/models/{version}/loss.png", api_errors(self.loss_plot))
        app.router.add_post("/admin/api/retrain", api_errors(self.retrain))
        app.router.add_post("/admin/api/rollback", api_errors(self.rollback))

    @property
    def enabled(self) -> bool:
        return self.token is not None and bool(self.token.get_secret_value())

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "admin.html", headers={"Cache-Control": "no-cache"})

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"enabled": self.enabled, "message": None if self.enabled else DISABLED_MESSAGE}
        )

    async def status(self, request: web.Request) -> web.Response:
        check_token(request, self.token)
        now = time.time()
        versions = await asyncio.to_thread(self.registry.versions)
        try:
            live = await self.registry.live_version(self.redis)
            previous = await asyncio.to_thread(self.registry.previous, live)
            beats = self.token_rates.fill(await read_heartbeats(self.redis))
            depths = await queue_depths(self.redis, self.shards)
            progress = await training_progress(self.redis)
        except (QueueError, RedisError, OSError) as e:
            raise ApiError(503, f"Redis is not answering: {e}", code="redis_unavailable") from e
        return web.json_response(
            {
                "time": now,
                "live_version": live,
                "versions": [version_info(v, live) for v in reversed(versions)],
                "training": progress,
                "queue": {"shards": depths, "total": sum(d["depth"] for d in depths)},
                "engines": [engine_info(b, now) for b in beats],
                "summary": engine_summary(beats, now),
                "rollback_to": previous.version if previous else None,
                "actions": {
                    "retrain": self.on_retrain is not None,
                    "rollback": self.on_rollback is not None,
                },
            }
        )

    async def loss_plot(self, request: web.Request) -> web.FileResponse:
        check_token(request, self.token)
        path = await asyncio.to_thread(self._loss_plot_path, request.match_info["version"])
        return web.FileResponse(path, headers={"Cache-Control": "private, max-age=60"})

    def _loss_plot_path(self, version: str) -> Path:
        """The plot of a version the registry lists; never a path built from the request."""
        found = next((v for v in self.registry.versions() if v.version == version), None)
        if found is None or found.loss_plot is None:
            raise ApiError(404, f"No loss curve for version {version!r}.", code="not_found")
        path = found.loss_plot.resolve()
        if not path.is_relative_to(self.registry.models_dir.resolve()) or not path.is_file():
            raise ApiError(404, f"No loss curve for version {version!r}.", code="not_found")
        return path

    async def retrain(self, request: web.Request) -> web.Response:
        check_token(request, self.token)
        if self.on_retrain is None:
            raise ApiError(
                501, "Retraining is not wired up in this process yet.", code="not_implemented"
            )
        return await self._run("retrain", self.on_retrain())

    async def rollback(self, request: web.Request) -> web.Response:
        check_token(request, self.token)
        data = await read_body(request)
        body = decode_json(data, RollbackBody) if data.strip() else RollbackBody()
        if self.on_rollback is None:
            raise ApiError(
                501, "Rollback is not wired up in this process yet.", code="not_implemented"
            )
        return await self._run("rollback", self.on_rollback(body.version))

    async def _run(self, action: str, call: Awaitable[str]) -> web.Response:
        try:
            message = await call
        except ParleyError as e:
            log.warning("admin %s refused: %s", action, e)
            raise ApiError(409, str(e), code=f"{action}_refused") from e
        log.info("admin %s: %s", action, message)
        return web.json_response({"ok": True, "message": message})
