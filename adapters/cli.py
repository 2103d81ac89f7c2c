"""``parley adapter …``: run one platform adapter as its own process (a systemd unit each)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import click

from bot import systemd
from bot.settings import Settings


@click.group("adapter")
def adapter_group() -> None:
    """Run a platform adapter (web, telegram, discord)."""


@adapter_group.command("web")
@click.option("--port", type=int, default=None, help="Port (default: web.port, 8080).")
@click.pass_obj
def web_command(settings: Settings, port: int | None) -> None:
    """Serve the chat page, the OpenAI-compatible API and the dashboard."""
    from adapters.web.app import run_web
    from bot import model_admin
    from bot.cli import run_async
    from bot.redis import connect
    from bot.registry import ModelRegistry
    from bot.runtime import find_redis_url

    if port is not None:
        settings = settings.model_copy(
            update={"web": settings.web.model_copy(update={"port": port})}
        )

    async def main() -> None:
        redis = await connect(find_redis_url(settings))
        registry = ModelRegistry.from_settings(settings)
        on_retrain, on_rollback = model_admin.callbacks(settings, redis, registry)
        try:
            await run_web(
                settings, redis, registry=registry, on_retrain=on_retrain, on_rollback=on_rollback
            )
        finally:
            await redis.aclose()

    run_async(main())


@adapter_group.command("telegram")
@click.pass_obj
def telegram_command(settings: Settings) -> None:
    """Answer on Telegram (PARLEY_TELEGRAM__TOKEN): long polling, or a webhook if configured."""
    from adapters.telegram import serve

    _run_platform(settings, serve, "telegram adapter", settings.telegram.metrics_port)


@adapter_group.command("discord")
@click.pass_obj
def discord_command(settings: Settings) -> None:
    """Answer on Discord (PARLEY_DISCORD__TOKEN): servers, threads, DMs, slash commands."""
    from adapters.discord import serve

    _run_platform(settings, serve, "discord adapter", settings.discord.metrics_port)


Serve = Callable[..., Awaitable[None]]
"""A platform package's ``serve(settings, redis, stop, *, ready=None)``."""


def _run_platform(settings: Settings, serve: Serve, name: str, metrics_port: int) -> None:
    """Run a platform adapter as its own process: its Prometheus port, systemd's notify
    protocol (READY once connected, STOPPING when draining), Redis, until SIGINT/SIGTERM."""
    from prometheus_client import start_http_server

    from bot.cli import run_async
    from bot.redis import connect
    from bot.runtime import find_redis_url, stop_event_on_signals

    async def main() -> None:
        if metrics_port:
            start_http_server(metrics_port)
        stop, ready = stop_event_on_signals(), asyncio.Event()
        async with systemd.supervised(ready, stop, name=name):
            redis = await connect(find_redis_url(settings))
            try:
                await serve(settings, redis, stop, ready=ready)
            finally:
                await redis.aclose()

    run_async(main())
