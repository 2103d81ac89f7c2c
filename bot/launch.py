"""``parley run``: all of Parley in one process, for one machine and for a first try.

Starts, in order: an embedded Redis-compatible server when no Redis URL is configured, an
engine worker, the trainer service (archive and retrain jobs), and the web adapter (with no
admin token configured, it makes one for this run and prints the dashboard's login link on
the console, not in the log), then the Telegram and Discord adapters whose tokens are set;
writes the runtime file that ``parley chat`` reads; and
on SIGINT/SIGTERM stops taking requests, lets the engine drain, and stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import secrets
from collections.abc import Coroutine
from typing import Any

import click
from pydantic import SecretStr

from bot import model_admin, systemd
from bot.embedded import EmbeddedRedis
from bot.redis import connect
from bot.registry import ModelRegistry
from bot.runtime import RuntimeInfo, runtime_file, stop_event_on_signals
from bot.settings import Settings
from bot.trainer.service import TrainerService

log = logging.getLogger(__name__)


async def run_all(settings: Settings, *, web: bool = True) -> None:
    """Run the whole system until a signal arrives or a service fails."""
    stop = stop_event_on_signals()
    # Imported here: bot/ is the composition root but must not pull torch in at import time.
    engine_service = importlib.import_module("engine.service")
    web_app = importlib.import_module("adapters.web.app") if web else None
    async with contextlib.AsyncExitStack() as stack:
        ready, notifier = asyncio.Event(), systemd.Notifier.from_environment()
        if web_app is None:
            running = systemd.supervised(ready, stop, name="parley run", notifier=notifier)
            await stack.enter_async_context(running)
        else:  # the web adapter sends READY (once it serves) and STOPPING itself
            await stack.enter_async_context(systemd.watchdog(notifier))
        url = settings.redis.url
        if url is None:
            url = await stack.enter_async_context(EmbeddedRedis(settings.data_dir / "redis"))
        redis = await connect(url)
        stack.push_async_callback(redis.aclose)
        tasks = [
            asyncio.create_task(
                engine_service.serve(settings, redis, stop, ready=ready), name="engine"
            )
        ]
        await _wait_ready(ready, tasks[0])
        trainer = TrainerService(settings, redis)
        tasks.append(asyncio.create_task(trainer.run(stop), name="trainer"))
        web_url = None
        login_url = None
        if web_app is not None:
            settings, login_url = _first_run_admin_token(settings)
            registry = ModelRegistry.from_settings(settings)
            on_retrain, on_rollback = model_admin.callbacks(settings, redis, registry)
            serving = web_app.run_web(
                settings, redis, registry=registry, on_retrain=on_retrain, on_rollback=on_rollback
            )
            tasks.append(asyncio.create_task(_until_cancelled(serving, stop), name="web"))
            web_url = f"http://{settings.web.host}:{settings.web.port}"
        if settings.telegram.token is not None:
            telegram = importlib.import_module("adapters.telegram")
            tasks.append(
                asyncio.create_task(telegram.serve(settings, redis, stop), name="telegram")
            )
        if settings.discord.token is not None:
            discord = importlib.import_module("adapters.discord")
            tasks.append(asyncio.create_task(discord.serve(settings, redis, stop), name="discord"))
        info = RuntimeInfo(pid=os.getpid(), redis_url=url, web_url=web_url)
        with runtime_file(settings.runtime_file, info):
            if web_url:
                log.info("Parley is up: chat at %s  (or run `parley chat`)", web_url)
            if login_url:
                click.echo(f"Dashboard (this run's admin login): {login_url}", err=True)
            await _until_stopped(stop, tasks)


def _first_run_admin_token(settings: Settings) -> tuple[Settings, str | None]:
    """With no admin token configured, one made for this run, and the dashboard link that
    logs in with it (the token travels in the URL fragment, which browsers never send)."""
    if settings.web.admin_token is not None and settings.web.admin_token.get_secret_value():
        return settings, None
    token = secrets.token_urlsafe(24)
    web = settings.web.model_copy(update={"admin_token": SecretStr(token)})
    url = f"http://{settings.web.host}:{settings.web.port}/admin#token={token}"
    return settings.model_copy(update={"web": web}), url


async def _until_cancelled(service: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run a serve-until-cancelled coroutine until ``stop``; its own failure propagates."""
    task = asyncio.create_task(service)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _wait_ready(ready: asyncio.Event, engine: asyncio.Task[None]) -> None:
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({waiter, engine}, return_when=asyncio.FIRST_COMPLETED)
    if engine.done():
        waiter.cancel()
        engine.result()  # re-raises the start-up error
        raise RuntimeError("the engine stopped during start-up")


async def _until_stopped(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()  # one service ending (or failing) stops them all
    log.info("stopping: no new requests; finishing the replies in flight")
    results = await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error("%s failed", task.get_name(), exc_info=result)
            raise result


@click.command("run")
@click.option("--no-web", is_flag=True, help="Do not start the web adapter.")
@click.option("--port", type=int, default=None, help="Web port (default: web.port, 8080).")
@click.pass_obj
def run_command(settings: Settings, no_web: bool, port: int | None) -> None:
    """Run all of Parley in one process: embedded Redis (unless PARLEY_REDIS_URL is set),
    one engine worker and the web chat on http://127.0.0.1:8080."""
    from bot.cli import run_async

    if port is not None:
        settings = settings.model_copy(
            update={"web": settings.web.model_copy(update={"port": port})}
        )
    run_async(run_all(settings, web=not no_web))
