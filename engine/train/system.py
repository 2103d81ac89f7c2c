"""What the trainer reads from and tells the running Parley system, through its Redis.

No Redis configured and no ``parley run`` running is not an error here: nobody could have
opted out, and no engine needs telling.
"""

from __future__ import annotations

import asyncio
import logging

from bot.errors import NotRunning, ParleyError
from bot.redis import connect
from bot.registry import ModelRegistry
from bot.runtime import find_redis_url
from bot.settings import Settings
from bot.store import ConversationStore

log = logging.getLogger(__name__)


def opted_out_users(settings: Settings) -> list[str]:
    """Users who asked to be forgotten (``/forget``), from the running system's Redis.

    No Redis configured and no ``parley run`` running means nobody could have asked. A
    configured Redis that does not answer is an error: training without the list could
    train on someone who opted out.
    """
    try:
        url = find_redis_url(settings)
    except NotRunning:
        return []
    return asyncio.run(_read_opted_out(url, settings.engine.state_ttl_s))


async def _read_opted_out(url: str, ttl_s: int) -> list[str]:
    redis = await connect(url)
    try:
        return await ConversationStore(redis, ttl_s=ttl_s).opted_out_users()
    finally:
        await redis.aclose()


def announce_version(settings: Settings, registry: ModelRegistry, version: str) -> None:
    """Tell running engines to swap, when a Parley is running; the LIVE file is already set."""
    try:
        url = find_redis_url(settings)
    except NotRunning:
        return

    async def announce() -> None:
        redis = await connect(url)
        try:
            await registry.announce(redis, version)
        finally:
            await redis.aclose()

    try:
        asyncio.run(announce())
    except ParleyError as e:
        log.warning("could not announce %s to running engines: %s", version, e)
