"""Fixtures every test may use. Kept light: no torch, no platform SDK, no network at import.

Redis: the session's ``redis_url`` is the Redis on 127.0.0.1:6379 when it answers PING, on a
database of its own (one of 9..15, held with a file lock so two test runs on this machine
never flush each other's data), else an embedded valkey server started for the session.
``PARLEY_TEST_REDIS_URL`` forces a URL; ``PARLEY_TEST_EMBEDDED=1`` forces the embedded server.

Secrets never reach the logs: for the whole session every log record (Parley's own loggers at
DEBUG, the rest at INFO) is scanned for the tokens and keys the tests use (every ``SecretStr``
made, see :mod:`tests.reliability.logscan`); one found fails the run, naming the test. The
``secret_log`` fixture gives tests the scanner (to add a secret, or to scan a child's output).

The ``redis`` fixture is an asyncio client on that database (made by :func:`bot.redis.connect`,
as in production), flushed before and after each test. ``redis_settings`` are queue settings
sized for tests (claims after 200 ms); ``make_chat`` builds :class:`ChatRequest` objects with
unique ids.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis.asyncio as aioredis

from bot.embedded import EmbeddedRedis
from bot.redis import connect
from bot.settings import RedisSettings
from bot.wire import ChatRequest
from tests.reliability.logscan import SecretLog

SYSTEM_REDIS = ("127.0.0.1", 6379)
TEST_DBS = range(9, 16)
"""Databases of the system Redis that tests may flush; one per concurrent test run."""


def redis_answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a Redis server at ``host:port`` replies +PONG (raw RESP, no client needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _lock_free_db() -> tuple[int, IO[str]] | None:
    """Lock and return a test database of the system Redis no other test run holds."""
    for db in TEST_DBS:
        path = Path(tempfile.gettempdir()) / f"parley-test-redis-db{db}.lock"
        f = path.open("a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return db, f
    return None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis database this test session may flush at will."""
    forced = os.environ.get("PARLEY_TEST_REDIS_URL")
    if forced:
        yield forced
        return
    if not os.environ.get("PARLEY_TEST_EMBEDDED") and redis_answers(*SYSTEM_REDIS):
        held = _lock_free_db()
        if held is not None:
            db, lock = held
            try:
                yield f"redis://{SYSTEM_REDIS[0]}:{SYSTEM_REDIS[1]}/{db}"
            finally:
                lock.close()
            return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client (bytes replies) on an empty database; flushed again afterwards."""
    client = await connect(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
def redis_settings() -> RedisSettings:
    """Queue settings for tests: 2 shards, small bounds, reclaim after 200 ms."""
    return RedisSettings(
        shards=2,
        max_stream_len=1_000,
        claim_idle_ms=200,
        max_deliveries=3,
        reply_stream_len=1_000,
        reply_stream_ttl_s=60,
    )


_request_ids = itertools.count(1)


@pytest.fixture
def make_chat() -> Callable[..., ChatRequest]:
    """``make_chat(text="hi", reply_to="test", **fields)``: a ChatRequest with a fresh id."""

    def make(text: str = "hi", reply_to: str = "test", **fields: Any) -> ChatRequest:
        n = next(_request_ids)
        fields.setdefault("id", f"req-{n}")
        fields.setdefault("conversation", f"test:chat:{n}")
        return ChatRequest(reply_to=reply_to, text=text, **fields)

    return make


_SECRET_LOG = SecretLog()
PARLEY_LOGGERS = ("bot", "adapters", "engine")


def pytest_configure(config: pytest.Config) -> None:
    _SECRET_LOG.learn_secret_strs()
    root = logging.getLogger()
    root.addHandler(_SECRET_LOG)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for name in PARLEY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SECRET_LOG.leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(_SECRET_LOG.report(), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def secret_log() -> SecretLog:
    """The session's scan of log lines for test secrets."""
    return _SECRET_LOG
