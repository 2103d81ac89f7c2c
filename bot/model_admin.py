"""The admin's model actions behind the dashboard's buttons: roll back, and retrain.

Rollback moves the registry's ``LIVE`` pointer and announces the version, so every engine
hot-swaps. Retrain is a request to the trainer service (:mod:`bot.trainer`), which may run on
another host: it runs one job at a time and reports progress in
:data:`bot.keys.TRAIN_PROGRESS`, which the dashboard shows; a retrain asked for while one
runs joins the running job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from bot.errors import ModelError
from bot.registry import ModelRegistry
from bot.settings import Settings
from bot.trainer.client import TrainerClient, now_ms
from bot.trainer.progress import describe
from bot.wire import TrainerRequest

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 15.0


async def rollback(registry: ModelRegistry, redis: aioredis.Redis, version: str | None) -> str:
    """Make ``version`` live (default: the version before the live one) and announce it.

    Raises :class:`ModelError` when there is nowhere to go, or the version is unknown or
    damaged (then nothing changes)."""
    live = await registry.live_version(redis)
    if version is None:
        previous = registry.previous(live)
        if previous is None:
            raise ModelError("there is no earlier version to roll back to")
        version = previous.version
    if version == live:
        raise ModelError(f"{version} is already live")
    registry.set_live(version)
    await registry.announce(redis, version)
    log.info("rolled back from %s to %s", live, version)
    return f"Rolled back to {version}; engines are swapping now."


async def request_retrain(
    redis: aioredis.Redis, *, user: str = "dashboard", timeout_s: float = ANSWER_TIMEOUT_S
) -> str:
    """Ask the trainer service for a retrain job; returns its first answer, for the admin."""
    request = TrainerRequest(
        id=f"dashboard-{uuid.uuid4().hex[:12]}",
        command="retrain",
        platform="web",
        user=user,
        created_ms=now_ms(),
    )
    answer = await TrainerClient(redis).ask(request, timeout_s=timeout_s)
    if answer is None:
        return (
            "The trainer service did not answer; the retrain waits for it "
            "(it runs if `parley trainer` is back within the hour)."
        )
    return describe(answer)


def callbacks(
    settings: Settings, redis: aioredis.Redis, registry: ModelRegistry
) -> tuple[Callable[[], Awaitable[str]], Callable[[str | None], Awaitable[str]]]:
    """``(on_retrain, on_rollback)`` for the web adapter's dashboard."""

    async def on_retrain() -> str:
        return await request_retrain(redis)

    async def on_rollback(version: str | None) -> str:
        return await rollback(registry, redis, version)

    return on_retrain, on_rollback
