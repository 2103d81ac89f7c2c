"""A small Discord world on the local fake, and the Parley Discord adapter running against it.

:func:`build_world` fills a :class:`FakeDiscord` with one guild, two channels (``general``,
where the bot answers when addressed, and ``chatty``, an answer channel), three users and an
admin role; :func:`adapter_settings` points the adapter at the fake; :func:`running_adapter`
runs :func:`adapters.discord.serve` until the block ends, then stops it the way ``parley``
does (the stop event), so the drain runs too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from adapters.discord import serve
from bot.redis import Redis
from bot.settings import DiscordSettings, Settings
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_payloads import Channel, Guild, Role, User

_adapter_numbers = itertools.count(1)


@dataclass
class World:
    fake: FakeDiscord
    guild: Guild
    general: Channel
    chatty: Channel
    alice: User
    bob: User
    carol: User
    """Holds the admin role (admin by role, not by id)."""
    admins: Role


def build_world(fake: FakeDiscord) -> World:
    alice, bob, carol = fake.add_user("alice"), fake.add_user("bob"), fake.add_user("carol")
    guild = fake.add_guild("Parley Test Server", [alice, bob, carol])
    admins = fake.add_role(guild, "bot-admins", [carol])
    general = fake.add_channel(guild, "general")
    chatty = fake.add_channel(guild, "chatty")
    return World(fake, guild, general, chatty, alice, bob, carol, admins)


def adapter_settings(world: World, **overrides: Any) -> DiscordSettings:
    """Discord settings aimed at the fake: commands in its guild, ``alice`` an admin by id,
    ``carol`` by role, ``chatty`` an answer channel, fast edits, a generous rate limit."""
    fields: dict[str, Any] = {
        "token": world.fake.token,
        "api_base": world.fake.api_base,
        "gateway_url": world.fake.gateway_url,
        "adapter_id": f"discord-test-{next(_adapter_numbers)}",
        "guild_ids": [world.guild.id],
        "admin_ids": [world.alice.id],
        "admin_role_ids": [world.admins.id],
        "answer_channels": [world.chatty.id],
        "edit_interval_s": 0.1,
        "guild_ready_timeout_s": 0.05,
        "rate_limit": "100/minute",
        "reply_timeout_s": 20.0,
    }
    fields.update(overrides)
    return DiscordSettings(**fields)


@dataclass
class Running:
    """A running adapter: its task, and the event that stops it (as a signal would)."""

    task: asyncio.Task[None]
    stop: asyncio.Event


@contextlib.asynccontextmanager
async def running_adapter(settings: Settings, redis: Redis) -> AsyncIterator[Running]:
    """Run the Discord adapter until the block ends; fails fast if it cannot start."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(settings, redis, stop, ready=ready), name="discord-adapter")
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiter.cancel()
        if task.done():
            task.result()
        task.cancel()
        raise TimeoutError("the Discord adapter did not become ready")
    try:
        yield Running(task, stop)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
