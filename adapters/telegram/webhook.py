"""Webhook mode: Telegram posts updates to the adapter's own aiohttp server.

The server listens on ``telegram.webhook_host:webhook_port`` and answers only
``POST telegram.webhook_path``; a reverse proxy (nginx, Caddy) terminates HTTPS at
``telegram.webhook_url`` and forwards to it. Each post must carry the secret that
``setWebhook`` registered (header ``X-Telegram-Bot-Api-Secret-Token``); anything else is
refused with 403. A post is answered 200 only once its update is taken (its request is in
Redis, or it was answered), so an update the adapter could not keep is posted again.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from aiohttp import web
from telegram import Bot, Update

from adapters.telegram.poller import ALLOWED_UPDATES
from bot.settings import TelegramSettings

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_BODY_BYTES = 1 << 20


def webhook_app(
    bot: Bot, secret: str, path: str, accept: Callable[[Sequence[Update]], Awaitable[None]]
) -> web.Application:
    """The application answering Telegram's posts at ``path``."""
    expected = secret.encode()

    async def receive(request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            log.warning("telegram webhook: refused a post without the right secret token")
            return web.Response(status=403, text="forbidden")
        try:
            update = Update.de_json(await request.json(), bot)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
            log.warning("telegram webhook: a post that is not an update: %s", e)
            return web.Response(status=400, text="not an update")
        await accept([update])
        return web.Response(status=200)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post(path, receive)
    return app


@asynccontextmanager
async def serving_webhook(
    bot: Bot, settings: TelegramSettings, accept: Callable[[Sequence[Update]], Awaitable[None]]
) -> AsyncIterator[int]:
    """Serve the webhook and register it with Telegram; yields the port it listens on.

    The webhook stays registered at exit, so Telegram keeps the updates that arrive while the
    adapter restarts and posts them when it is back.
    """
    assert settings.webhook_url is not None and settings.webhook_secret is not None
    secret = settings.webhook_secret.get_secret_value()
    app = webhook_app(bot, secret, settings.webhook_path, accept)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.webhook_host, settings.webhook_port)
        await site.start()
        port = int(runner.addresses[0][1])
        await bot.set_webhook(
            settings.webhook_url,
            secret_token=secret,
            allowed_updates=list(ALLOWED_UPDATES),
            drop_pending_updates=False,
        )
        log.info(
            "telegram: webhook %s registered; serving %s on %s:%d",
            settings.webhook_url,
            settings.webhook_path,
            settings.webhook_host,
            port,
        )
        yield port
    finally:
        await runner.cleanup()
