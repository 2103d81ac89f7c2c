"""The web adapter's application: the app factory, its lifecycle and its middlewares.

One aiohttp application serves the chat page (:mod:`adapters.web.chat`), the OpenAI-compatible
API (:mod:`adapters.web.openai_api`), the admin dashboard (:mod:`adapters.web.admin`) and the
operations endpoints (:mod:`adapters.web.ops`) on one port. :func:`create_app` builds it; the
:class:`bot.queue.ParleyClient` it sends requests through starts and closes with the app
(``cleanup_ctx``). :func:`run_web` serves it on ``web.host:web.port`` until cancelled.

Two middlewares wrap every request: one records the adapter metrics (requests by route and
status, latency, in flight), the other turns any error that escapes a handler into a JSON
error in OpenAI's shape on the API paths (a 404, a 405, a body over 1 MB, or a bug, which is
logged and answered 500 without details).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from adapters.metrics import AdapterMetrics, adapter_metrics
from adapters.replies import Replies
from adapters.web.admin import AdminRoutes
from adapters.web.chat import ChatRoutes
from adapters.web.clients import CLIENTS, ClientAddresses, rate_limit_middleware
from adapters.web.consent import ConsentRoutes
from adapters.web.http import MAX_BODY_BYTES, ApiError, error_response
from adapters.web.openai_api import OpenAIRoutes
from adapters.web.ops import OpsRoutes
from bot import systemd
from bot.commands import Commands, RetrainCallback, RollbackCallback
from bot.queue import ParleyClient
from bot.ratelimit import RateLimiter
from bot.redis import Redis
from bot.registry import ModelRegistry
from bot.safety import SafetyFilter
from bot.settings import Settings

log = logging.getLogger(__name__)

JSON_PATHS = ("/v1/", "/api/", "/admin/api/")
"""Paths whose errors are answered as JSON in OpenAI's shape."""
SHUTDOWN_TIMEOUT_S = 5.0

CLIENT = web.AppKey("parley_client", ParleyClient)
ADAPTER_ID = web.AppKey("adapter_id", str)


def default_adapter_id() -> str:
    return f"web-{socket.gethostname()}-{os.getpid()}"


def _route_name(request: web.Request) -> str:
    """The matched route's pattern (``/v1/models/{model}``), never the raw path: bounded."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


def metrics_middleware(metrics: AdapterMetrics, adapter_id: str) -> Middleware:
    in_flight = metrics.in_flight.labels(adapter_id)

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        in_flight.inc()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            in_flight.dec()
            route = _route_name(request)
            metrics.requests.labels(adapter_id, route, str(status)).inc()
            metrics.latency.labels(adapter_id, route).observe(time.perf_counter() - start)

    return record


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors that escape a handler, as JSON on the API paths; a bug never leaks details."""
    try:
        return await handler(request)
    except ApiError as e:
        return e.response()
    except web.HTTPException as e:
        if e.status < 400 or not request.path.startswith(JSON_PATHS):
            raise
        code = "request_too_large" if e.status == 413 else None
        return error_response(e.status, e.reason, code=code)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("unhandled error answering %s %s", request.method, request.path)
        if not request.path.startswith(JSON_PATHS):
            raise
        return error_response(500, "Internal server error.", code="internal")


def create_app(
    settings: Settings,
    redis: Redis,
    *,
    adapter_id: str,
    registry: ModelRegistry,
    on_retrain: RetrainCallback | None = None,
    on_rollback: RollbackCallback | None = None,
) -> web.Application:
    """The web adapter's application. It owns a :class:`ParleyClient` for ``adapter_id``
    (started and closed with the app); ``redis`` stays the caller's to close."""
    metrics = adapter_metrics()
    client = ParleyClient(redis, settings.redis, adapter_id)
    clients = ClientAddresses(settings.web.trusted_proxies)
    web_limits = settings.web
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            metrics_middleware(metrics, adapter_id),
            error_middleware,
            rate_limit_middleware(
                clients,
                RateLimiter(redis, web_limits.rate_limit) if web_limits.rate_limit else None,
                RateLimiter(redis, web_limits.global_rate_limit)
                if web_limits.global_rate_limit
                else None,
            ),
        ],
    )
    app[CLIENT] = client
    app[CLIENTS] = clients
    app[ADAPTER_ID] = adapter_id

    async def client_lifecycle(app: web.Application) -> AsyncIterator[None]:
        await client.start()
        log.info("web adapter %s started", adapter_id)
        try:
            yield
        finally:
            await client.close()

    app.cleanup_ctx.append(client_lifecycle)
    replies = Replies(
        client,
        adapter_id=adapter_id,
        timeout_s=settings.web.reply_timeout_s,
        metrics=metrics,
        safety=SafetyFilter.from_settings(settings.safety),
    )

    async def live_version() -> str | None:
        return await registry.live_version(redis)

    ChatRoutes(replies, max_message_chars=settings.web.max_message_chars).setup(app)
    OpenAIRoutes(
        replies,
        api_keys=settings.web.api_keys,
        live_version=live_version,
        max_message_chars=settings.web.max_message_chars,
    ).setup(app)
    AdminRoutes(
        redis,
        registry,
        token=settings.web.admin_token,
        shards=settings.redis.shards,
        on_retrain=on_retrain,
        on_rollback=on_rollback,
    ).setup(app)
    OpsRoutes(redis).setup(app)
    commands = Commands(client, redis, registry, rollback=on_rollback)
    ConsentRoutes(commands, adapter_id=adapter_id).setup(app)
    return app


async def run_web(
    settings: Settings,
    redis: Redis,
    *,
    adapter_id: str | None = None,
    registry: ModelRegistry | None = None,
    on_retrain: RetrainCallback | None = None,
    on_rollback: RollbackCallback | None = None,
) -> None:
    """Serve the web adapter on ``web.host:web.port`` until cancelled, then shut down cleanly.

    ``adapter_id`` defaults to ``web.adapter_id``, else ``web-<host>-<pid>``; ``registry`` to
    the registry at ``settings.models_location``. A port that cannot be bound raises ``OSError``.
    """
    app = create_app(
        settings,
        redis,
        adapter_id=adapter_id or settings.web.adapter_id or default_adapter_id(),
        registry=registry or ModelRegistry.from_settings(settings),
        on_retrain=on_retrain,
        on_rollback=on_rollback,
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    # Under systemd (Type=notify): READY once the port is bound, STOPPING when cancelled.
    async with systemd.watchdog(systemd.Notifier.from_environment()) as notifier:
        try:
            site = web.TCPSite(runner, settings.web.host, settings.web.port)
            await site.start()
            log.info("web adapter serving on %s", ", ".join(map(str, runner.addresses)))
            where = ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses if isinstance(a, tuple))
            notifier.ready(f"web adapter: serving on {where}")
            await asyncio.Event().wait()
        finally:
            notifier.stopping("web adapter: stopping")
            await runner.cleanup()
