"""The admin's model actions behind the dashboard's buttons: roll back, and retrain.

Rollback moves the registry's ``LIVE`` pointer and announces the version, so every engine
hot-swaps. Retrain starts ``parley train --publish`` as a child process (one at a time,
guarded by a Redis lock), reports its state in :data:`bot.keys.TRAIN_PROGRESS`, and the
trainer publishes the new model only if it beats the live one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from bot import keys
from bot.errors import ModelError, ParleyError
from bot.registry import ModelRegistry
from bot.settings import Settings

log = logging.getLogger(__name__)

TRAIN_LOCK_TTL_S = 6 * 3600


class TrainingBusy(ParleyError):
    """A training run is already going."""


async def rollback(registry: ModelRegistry, redis: aioredis.Redis, version: str | None) -> str:
    """Make ``version`` live (default: the version before the live one) and announce it."""
    versions = registry.versions()
    live = await registry.live_version(redis)
    if version is None:
        older = [v for v in versions if live is None or v.number < registry.get(live).number]
        if not older:
            raise ModelError("there is no earlier version to roll back to")
        version = older[-1].version
    registry.set_live(version)
    await registry.announce(redis, version)
    log.info("rolled back from %s to %s", live, version)
    return f"Rolled back to {version}; engines are swapping now."


async def _report(redis: aioredis.Redis, **progress: object) -> None:
    await redis.set(keys.TRAIN_PROGRESS, json.dumps({**progress, "time": time.time()}))


async def start_retrain(
    settings: Settings, redis: aioredis.Redis, config: Path | None = None
) -> str:
    """Start a background ``parley train --publish``; raises :class:`TrainingBusy` if one runs."""
    if not await redis.set(keys.TRAIN_LOCK, "1", nx=True, ex=TRAIN_LOCK_TTL_S):
        raise TrainingBusy("a training run is already in progress")
    out = settings.data_dir / "runs" / time.strftime("retrain-%Y%m%d-%H%M%S")
    args = [sys.executable, "-m", "bot.cli"]
    if config is not None:
        args += ["--config", str(config)]
    args += ["train", "--publish", "--out", str(out)]
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    except OSError as e:
        await redis.delete(keys.TRAIN_LOCK)
        raise ParleyError(f"could not start training: {e}") from e
    await _report(redis, status="running", pid=proc.pid, out=str(out))
    asyncio.get_running_loop().create_task(_watch(proc, redis, out))
    return f"Training started (pid {proc.pid}); progress appears here."


async def _watch(proc: asyncio.subprocess.Process, redis: aioredis.Redis, out: Path) -> None:
    assert proc.stderr is not None
    _, stderr = await proc.communicate()
    tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
    status = "done" if proc.returncode == 0 else "failed"
    log.info("training run in %s %s: %s", out, status, tail[0])
    try:
        await _report(redis, status=status, returncode=proc.returncode, message=tail[0][-300:])
    finally:
        await redis.delete(keys.TRAIN_LOCK)


def callbacks(
    settings: Settings, redis: aioredis.Redis, registry: ModelRegistry
) -> tuple[Callable[[], Awaitable[str]], Callable[[str | None], Awaitable[str]]]:
    """``(on_retrain, on_rollback)`` for the web adapter's dashboard."""

    async def on_retrain() -> str:
        return await start_retrain(settings, redis)

    async def on_rollback(version: str | None) -> str:
        return await rollback(registry, redis, version)

    return on_retrain, on_rollback
