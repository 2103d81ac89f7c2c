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


class FreezableProxy:
    """A TCP proxy to Redis that can stop passing the client's commands on.

    While frozen, what clients send is held back (never forwarded, dropped at close), and
    :attr:`held_marker` is set once the held bytes contain one of ``markers``: the process on
    the other side is then stuck at a command that names it. With ``freeze_on``, the proxy
    freezes by itself at the first bytes that contain one of those (they are held too).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        markers: tuple[bytes, ...],
        *,
        freeze_on: tuple[bytes, ...] = (),
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.markers = markers
        self.freeze_on = freeze_on
        self.frozen = False
        self.held_marker = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers += [writer, up_writer]
        held = bytearray()

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                if any(marker in data for marker in self.freeze_on):
                    self.frozen = True
                if self.frozen:
                    held.extend(data)
                    if any(marker in held for marker in self.markers):
                        self.held_marker.set()
                    continue
                up_writer.write(data)
                await up_writer.drain()

        async def server_to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(client_to_server(), server_to_client())
        for w in (writer, up_writer):
            w.close()
