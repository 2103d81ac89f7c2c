"""Running the real Telegram adapter against :class:`~tests.fakes.telegram_api.FakeBotAPI`.

:func:`telegram_settings` points the adapter at the fake (its ``base_url``) with the pacing
intervals of a test; :func:`running_adapter` runs :func:`adapters.telegram.serve` as it runs
in production (its own Bot, queue client and poller) until the block ends, then stops it the
way a signal does and waits for it to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from adapters.telegram import serve
from bot.settings import RedisSettings, Settings, TelegramSettings
from tests.fakes.telegram_api import Chat, FakeBotAPI, User

ALICE = User(1001, "Alice", "alice")
BOB = User(1002, "Bob", "bob")
ADMIN = User(1003, "Ada", "ada")
OTHER_BOT = User(1999, "Other", "other_bot", is_bot=True)
GROUP = Chat(-100777, "supergroup", "Friends")
FORUM = Chat(-100888, "supergroup", "Forum", is_forum=True)


def private(user: User) -> Chat:
    return Chat(user.id)


def telegram_settings(
    fake: FakeBotAPI, redis_settings: RedisSettings, data_dir: Path, **telegram: Any
) -> Settings:
    """Settings for an adapter talking to ``fake``; ``telegram`` overrides ``[telegram]``."""
    values: dict[str, Any] = {
        "token": fake.token,
        "base_url": fake.base_url,
        "admin_ids": [ADMIN.id],
        "poll_timeout_s": 5,
        "poller_lease_s": 2.0,
        "private_interval_s": 0.0,
        "group_interval_s": 0.0,
        "typing_every_s": 0.5,
        "reply_timeout_s": 20.0,
        "rate_limit": "1000/minute",
    }
    values.update(telegram)
    return Settings(data_dir=data_dir, redis=redis_settings, telegram=TelegramSettings(**values))


@contextlib.asynccontextmanager
async def running_adapter(
    settings: Settings, redis: aioredis.Redis
) -> AsyncIterator[asyncio.Task[None]]:
    """Serve until the block ends, then set the stop event and wait for the drain."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(settings, redis, stop, ready=ready), name="telegram")
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def handled(fake: FakeBotAPI, update_id: int) -> None:
    """Until the adapter has confirmed ``update_id`` (asked getUpdates for a later offset):
    by then it has finished deciding what to do with it."""
    await fake.wait_for(lambda: fake.confirmed_below > update_id)
