"""``parley adapter telegram``: the Telegram adapter's lifecycle under Parley's own runtime.

:func:`serve` builds python-telegram-bot's :class:`~telegram.Bot` (initialised and shut down
here, no ``run_polling``), the queue client, the command layer and the adapter; registers the
bot's commands (``setMyCommands``: everyone's, and the admins' in their private chats); then
polls (one poller per token, the others standing by) or serves the webhook until ``stop`` is
set; then stops taking updates, lets the replies in flight finish, and closes. Each time it
becomes the poller (in webhook mode: before it serves), it first takes over the replies that
processes gone before it still owe (:meth:`TelegramAdapter.adopt`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from telegram import Bot, BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.request import HTTPXRequest

from adapters.metrics import adapter_metrics
from adapters.replies import Replies
from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.lease import PollerLease
from adapters.telegram.metrics import telegram_metrics
from adapters.telegram.pending import PendingReplies
from adapters.telegram.poller import Poller
from adapters.telegram.updates import BotIdentity
from adapters.telegram.webhook import serving_webhook
from adapters.tracked import TrackedClient
from bot import model_admin
from bot.commands import COMMANDS, Commands
from bot.errors import ConfigError
from bot.ratelimit import RateLimiter
from bot.redis import Redis
from bot.registry import ModelRegistry
from bot.safety import SafetyFilter
from bot.settings import Settings, TelegramSettings

log = logging.getLogger(__name__)

CONNECTIONS = 64
"""HTTP connections to the Bot API for sends and edits (replies stream concurrently)."""


def default_adapter_id() -> str:
    return f"telegram-{socket.gethostname()}-{os.getpid()}"


def make_bot(settings: TelegramSettings) -> Bot:
    """The python-telegram-bot client for the configured token and Bot API base."""
    if settings.token is None:
        raise ConfigError("the Telegram adapter needs a bot token: set PARLEY_TELEGRAM__TOKEN")
    # Time periods as timedelta (python-telegram-bot's coming default; the int form warns).
    os.environ.setdefault("PTB_TIMEDELTA", "true")
    return Bot(
        settings.token.get_secret_value(),
        base_url=settings.base_url,
        request=HTTPXRequest(connection_pool_size=CONNECTIONS),
        get_updates_request=HTTPXRequest(connection_pool_size=2),
    )


async def register_commands(bot: Bot, admin_ids: list[int]) -> None:
    """``setMyCommands`` for everyone, and the full list in each admin's private chat."""
    everyone = [BotCommand(s.name, s.description) for s in COMMANDS if not s.admin]
    await bot.set_my_commands(everyone, scope=BotCommandScopeDefault())
    full = [BotCommand(s.name, s.description) for s in COMMANDS]
    for admin in admin_ids:
        try:
            await bot.set_my_commands(full, scope=BotCommandScopeChat(admin))
        except TelegramError as e:  # e.g. the admin has not started a chat with the bot yet
            log.warning("telegram: could not list the admin commands for %s: %s", admin, e)


async def serve(
    settings: Settings, redis: Redis, stop: asyncio.Event, *, ready: asyncio.Event | None = None
) -> None:
    """Run the Telegram adapter until ``stop`` is set, then drain and return."""
    tg = settings.telegram
    # httpx logs every request's URL at INFO, and a Bot API URL holds the token.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
    bot = make_bot(tg)
    try:
        await bot.initialize()  # getMe: checks the token
    except InvalidToken as e:
        raise ConfigError(f"Telegram refused the bot token ({e.message}); check it") from e
    except NetworkError as e:
        raise ConfigError(
            f"cannot reach the Telegram Bot API at {tg.base_url} ({e.message}); "
            "check the network and telegram.base_url"
        ) from e
    try:
        await _serve(settings, redis, bot, stop, ready)
    finally:
        await bot.shutdown()


async def _serve(
    settings: Settings, redis: Redis, bot: Bot, stop: asyncio.Event, ready: asyncio.Event | None
) -> None:
    tg = settings.telegram
    adapter_id = tg.adapter_id or default_adapter_id()
    me = BotIdentity(bot.id, bot.username)
    registry = ModelRegistry.from_settings(settings)
    on_retrain, on_rollback = model_admin.callbacks(settings, redis, registry)
    pending = PendingReplies(redis, me.id, settings.redis.reply_stream_ttl_s)
    client = TrackedClient(redis, settings.redis, adapter_id, pending)
    async with client:
        adapter = TelegramAdapter(
            bot=bot,
            me=me,
            settings=tg,
            redis=redis,
            client=client,
            replies=Replies(
                client,
                adapter_id=adapter_id,
                timeout_s=tg.reply_timeout_s,
                metrics=adapter_metrics(),
                safety=SafetyFilter.from_settings(settings.safety),
            ),
            commands=Commands(
                client,
                redis,
                registry,
                retrain=on_retrain,
                rollback=on_rollback,
                bot_name=bot.first_name,
            ),
            metrics=telegram_metrics(),
            pending=pending,
            limiter=RateLimiter(redis, tg.rate_limit) if tg.rate_limit else None,
        )
        await register_commands(bot, tg.admin_ids)
        log.info("telegram adapter %s started as @%s (%s mode)", adapter_id, me.username, tg.mode)
        try:
            if tg.mode == "webhook":
                await adapter.adopt()
                async with serving_webhook(bot, tg, adapter.accept):
                    if ready is not None:
                        ready.set()
                    await stop.wait()
            else:
                if ready is not None:
                    ready.set()
                lease = PollerLease(redis, me.id, adapter_id, tg.poller_lease_s)
                poller = Poller(
                    bot,
                    redis,
                    lease,
                    adapter.accept,
                    bot_id=me.id,
                    timeout_s=tg.poll_timeout_s,
                    on_lead=adapter.adopt,
                )
                await poller.run(stop)
        finally:
            await adapter.drain(tg.reply_timeout_s)
    log.info("telegram adapter %s stopped", adapter_id)
