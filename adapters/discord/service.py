"""Running the Discord adapter: :func:`serve` wires the pieces and runs until told to stop.

It builds its own queue client (adapter id ``discord-<host>-<pid>`` unless set), the
command layer, the per-user rate limiter and the discord.py client; serves until ``stop`` is
set; then takes no new messages, lets the replies in flight finish (up to
``reply_timeout_s``), and disconnects. Each chat reply is kept as owed in Redis until it is
delivered; once connected, a process delivers the replies an earlier one with the same
adapter id left owed (:mod:`adapters.discord.adopt`).

Without the privileged message-content intent (``message_content = false``, or Discord
refusing it with close code 4014) the adapter still runs: it logs once what it cannot do and
serves mentions, DMs, replies to its messages and slash commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import discord

from adapters.discord.adopt import Adoption
from adapters.discord.chat import DiscordChat
from adapters.discord.client import ParleyDiscordClient, point_library_at
from adapters.discord.metrics import discord_metrics
from adapters.discord.owed import Ledger, owed_replies
from adapters.discord.reactions import DiscordReactions
from adapters.discord.slash import SlashCommands
from adapters.discord.state import DiscordState
from adapters.metrics import adapter_metrics
from adapters.replies import Replies
from adapters.tracked import TrackedClient
from bot import model_admin
from bot.commands import Commands
from bot.errors import ConfigError
from bot.ratelimit import RateLimiter
from bot.redis import Redis
from bot.registry import ModelRegistry
from bot.safety import SafetyFilter
from bot.settings import DiscordSettings, Settings

log = logging.getLogger(__name__)

WITHOUT_CONTENT = (
    "discord: no message-content intent%s, so the bot answers only DMs, mentions, replies "
    "to its messages and slash commands; answer_channels, random replies and threads it "
    "joined need the intent (Developer Portal → Bot → Message Content Intent)"
)


def default_adapter_id() -> str:
    """``discord-<host>``: the same for a restarted process (one Discord adapter per host
    and bot), so it delivers the replies its predecessor owed."""
    return f"discord-{socket.gethostname()}"


def _token(settings: DiscordSettings) -> str:
    if settings.token is None or not settings.token.get_secret_value().strip():
        raise ConfigError("no Discord token: set PARLEY_DISCORD__TOKEN to the bot's token")
    return settings.token.get_secret_value().strip()


async def serve(
    settings: Settings, redis: Redis, stop: asyncio.Event, *, ready: asyncio.Event | None = None
) -> None:
    """Run the Discord adapter until ``stop`` is set, then drain and return."""
    config = settings.discord
    token = _token(config)
    point_library_at(config)
    adapter_id = config.adapter_id or default_adapter_id()
    metrics = discord_metrics()
    pending = owed_replies(redis, adapter_id, settings.redis.reply_stream_ttl_s)
    queue = TrackedClient(redis, settings.redis, adapter_id, pending)
    async with queue:
        ledger = Ledger(queue, pending)
        timeout_s = config.reply_timeout_s
        replies = Replies(
            queue,
            adapter_id=adapter_id,
            timeout_s=timeout_s,
            metrics=adapter_metrics(),
            safety=SafetyFilter.from_settings(settings.safety),
        )
        registry = ModelRegistry.from_settings(settings)
        on_retrain, on_rollback = model_admin.callbacks(settings, redis, registry)
        commands = Commands(queue, redis, registry, retrain=on_retrain, rollback=on_rollback)
        chat = DiscordChat(
            config,
            replies=replies,
            limiter=RateLimiter(redis, config.rate_limit),
            state=DiscordState(redis),
            metrics=metrics,
            ledger=ledger,
        )
        adoption = Adoption(chat, ledger, timeout_s=timeout_s)
        slash = SlashCommands(chat, commands)
        reactions = DiscordReactions(
            config, state=chat.state, commands=commands, metrics=metrics, adapter_id=adapter_id
        )
        content = config.message_content
        if not content:
            log.warning(WITHOUT_CONTENT, " (discord.message_content is off)")
        while True:
            client = ParleyDiscordClient(
                config,
                chat,
                slash,
                reactions,
                message_content=content,
                ready=ready,
                adoption=adoption,
            )
            try:
                await _run(client, token, chat, stop, drain_s=config.reply_timeout_s)
                return
            except discord.PrivilegedIntentsRequired:
                if not content:
                    raise
                log.warning(WITHOUT_CONTENT, " (Discord refused it: not enabled for this bot)")
                content = False
            except discord.LoginFailure as e:
                raise ConfigError(f"Discord refused the token (PARLEY_DISCORD__TOKEN): {e}") from e


async def _run(
    client: ParleyDiscordClient,
    token: str,
    chat: DiscordChat,
    stop: asyncio.Event,
    *,
    drain_s: float,
) -> None:
    """Run ``client`` until ``stop`` (then drain and close) or until it fails (re-raised)."""
    running = asyncio.create_task(client.start(token), name="discord-client")
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if running.done():
        await client.close()
        running.result()  # a start-up or gateway failure propagates
        raise RuntimeError("the Discord client stopped on its own")
    log.info("discord: stopping; finishing the replies in flight")
    await chat.drain(drain_s)
    await client.close()
    with contextlib.suppress(asyncio.CancelledError):
        await running
