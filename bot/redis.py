"""Connections to Redis: one factory, one health check, errors translated to :class:`QueueError`.

Every Parley process gets its client from :func:`connect`, so every client is configured the
same way: raw bytes (wire messages are MessagePack, never text); a bounded connect timeout;
no socket read/write timeout, because blocking stream reads would trip it and because with
one redis-py sends every command through ``asyncio.wait_for``, which on Python 3.11 costs a
task per command and can swallow a cancellation (dead peers are found by TCP keepalive and a
PING before reusing a connection idle for ``HEALTH_CHECK_INTERVAL_S``); and an answer to PING
before the caller gets it, so a wrong URL fails at start-up with a message that says what
to fix rather than on the first message.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot import sentinel
from bot.errors import QueueError

Redis = aioredis.Redis
"""The client type every queue class takes (``redis.asyncio.Redis`` with bytes replies)."""

DEFAULT_CONNECT_TIMEOUT_S = 5.0
HEALTH_CHECK_INTERVAL_S = 30


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    query = re.sub(r"(password=)[^&]*", r"\1***", parts.query)
    if not colon and query == parts.query:
        return url
    netloc = f"{user}:***{at}{hosts}" if colon else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


async def connect(url: str, *, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> Redis:
    """A client for ``url`` that has answered PING, or :class:`QueueError` saying why not.

    The client returns bytes (``decode_responses=False``), which the queue classes rely on.
    """
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": None,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    try:
        if sentinel.is_sentinel_url(url):  # the master of a Sentinel-monitored service
            client: Redis = sentinel.master_client(url, **options)
        else:
            client = aioredis.Redis.from_url(url, **options)
    except (ValueError, RedisError) as e:
        raise QueueError(
            f"invalid Redis URL {redact(url)!r}: {e} (expected redis://host:port/db)"
        ) from e
    try:
        await client.ping()
    except (RedisError, OSError) as e:
        await client.aclose()
        raise QueueError(
            f"cannot reach Redis at {redact(url)}: {e}. Start redis-server there, fix "
            "PARLEY_REDIS__URL, or unset it to let `parley run` start an embedded server."
        ) from e
    return client


async def ping(redis: Redis) -> float:
    """Round trip of one PING in milliseconds; :class:`QueueError` when Redis does not answer."""
    start = time.perf_counter()
    try:
        await redis.ping()
    except (RedisError, OSError) as e:
        raise QueueError(f"Redis did not answer PING: {e}") from e
    return (time.perf_counter() - start) * 1000.0
