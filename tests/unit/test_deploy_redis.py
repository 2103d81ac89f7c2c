"""deploy/redis.conf on a real redis-server, and Parley through a real Redis Sentinel.

The servers are started by the test (skipped where redis-server is not installed, except
under ``.ci/run``, which installs it) on free ports of 127.0.0.1, each in its own directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from bot.errors import QueueError
from bot.redis import connect, redact
from bot.sentinel import parse_sentinel_url

REDIS_SERVER = shutil.which("redis-server")
DEPLOY_CONF = Path(__file__).parents[2] / "deploy" / "redis.conf"
PASSWORD = "test-password-for-redis"
if REDIS_SERVER is None and os.environ.get("PARLEY_REQUIRE_DEPLOY_TOOLS"):  # set by .ci/run
    raise RuntimeError("PARLEY_REQUIRE_DEPLOY_TOOLS is set but redis-server is not installed")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def redis_cli_ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(64)


class Server:
    """A redis-server child process (``args`` after its config file); its log is kept."""

    def __init__(self, directory: Path, config: Path, *args: str, sentinel: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # A copy: a server rewrites its config file after a failover (CONFIG REWRITE).
        own_config = directory / config.name
        shutil.copyfile(config, own_config)
        command = [str(own_config), *(["--sentinel"] if sentinel else [])]
        command += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory)]
        self.command = [*command, "--supervised", "no", "--daemonize", "no", *args]
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Server:
        """Start the server; return once it accepts connections."""
        self.proc = await asyncio.create_subprocess_exec(
            str(REDIS_SERVER),
            *self.command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        # A sentinel says who it is once it listens; a data server, that it is ready.
        await self.logged(r"Sentinel ID is|Ready to accept connections")
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:  # drained to the end, so the server never blocks
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def logged(self, pattern: str) -> str:
        """The first log line matching ``pattern`` (bounded wait; fails if the server exits)."""
        async with asyncio.timeout(60), self._changed:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                if self._reader is not None and self._reader.done():
                    raise AssertionError("redis-server exited:\n" + "\n".join(self.lines))
                await self._changed.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


@pytest.fixture
async def servers() -> AsyncIterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        await server.stop()


@needs_redis
async def test_production_config_persists_refuses_eviction_and_needs_a_password(
    tmp_path: Path, servers: list[Server]
) -> None:
    # The deploy config as shipped, with only the test's address, port, directory and password.
    server = Server(tmp_path / "redis", DEPLOY_CONF, "--requirepass", PASSWORD)
    servers.append(server)
    await server.start()
    assert redis_cli_ping(server.port).startswith(b"-NOAUTH")
    with pytest.raises(QueueError, match="cannot reach Redis"):
        await connect(f"redis://127.0.0.1:{server.port}/0")
    client = await connect(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
    try:
        config = {_str(k): _str(v) for k, v in (await client.config_get("*")).items()}
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "everysec"
        assert config["maxmemory-policy"] == "noeviction"
        assert int(config["maxmemory"]) == 2 * 2**30
    finally:
        await client.aclose()


def test_sentinel_url_is_parsed_and_redacted() -> None:
    url = "redis+sentinel://:s3cret@10.0.0.1:26379,[::1]:26380,h3/parley/2?sentinel_password=x"
    target = parse_sentinel_url(url)
    assert target.sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("h3", 26379))
    assert (target.service, target.db, target.password) == ("parley", 2, "s3cret")
    assert target.sentinel_password == "x"
    assert "s3cret" not in redact(url) and "=x" not in redact(url)
    for bad in ("redis+sentinel://h:1", "redis+sentinel:///svc", "redis+sentinel://h:x/svc"):
        with pytest.raises(QueueError):
            parse_sentinel_url(bad)


async def promotable(sentinels: aioredis.Redis) -> None:
    """Until the sentinel has the replica's own INFO with its link to the master up (it then
    accepts a FAILOVER). The sentinel announces no event for this, so its state is read
    again every 100 ms, within a bound."""
    async with asyncio.timeout(60):
        while True:
            for info in await sentinels.sentinel_slaves("parley"):
                if info.get("master-link-status") == "ok" and int(info["info-refresh"]) < 5000:
                    return
            await asyncio.sleep(0.1)


@needs_redis
async def test_parley_follows_the_master_through_a_sentinel_failover(
    tmp_path: Path, servers: list[Server]
) -> None:
    auth = ["--requirepass", PASSWORD, "--masterauth", PASSWORD, "--appendonly", "no"]
    master = Server(tmp_path / "master", DEPLOY_CONF, *auth)
    servers.append(master)
    await master.start()
    replica = Server(
        tmp_path / "replica", DEPLOY_CONF, *auth, "--replicaof", "127.0.0.1", str(master.port)
    )
    servers.append(replica)
    await replica.start()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"sentinel monitor parley 127.0.0.1 {master.port} 1\n"
        f"sentinel auth-pass parley {PASSWORD}\n"
        "sentinel down-after-milliseconds parley 1000\n"
        "sentinel failover-timeout parley 10000\n"
    )
    sentinel = Server(tmp_path / "sentinel", conf, sentinel=True)
    servers.append(sentinel)
    await sentinel.start()

    url = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{sentinel.port}/parley/0"
    client = await connect(url)
    try:
        await client.set("before", "1")
        direct = aioredis.Redis(port=master.port, password=PASSWORD)
        assert await direct.get("before") == b"1"
        await direct.aclose()

        await sentinel.logged(rf"\+slave slave 127.0.0.1:{replica.port}")  # it knows the replica
        sentinels = aioredis.Redis(port=sentinel.port, decode_responses=True)
        await promotable(sentinels)
        await sentinels.execute_command("SENTINEL", "FAILOVER", "parley")
        await sentinels.aclose()
        await sentinel.logged(rf"\+switch-master parley .* {replica.port}$")
        await sentinel.logged(rf"\+convert-to-slave slave 127.0.0.1:{master.port}")

        # The sentinel closed the clients of the old master: a command on such a connection
        # fails (Parley's loops retry on the QueueError it becomes); the next one asks the
        # sentinel again and writes to the promoted replica.
        with contextlib.suppress(RedisConnectionError):
            await client.set("after", "2")
        await client.set("after", "2")
        promoted = aioredis.Redis(port=replica.port, password=PASSWORD)
        assert (await promoted.info("replication"))["role"] == "master"
        assert await promoted.get("after") == b"2"
        assert await promoted.get("before") == b"1"
        await promoted.aclose()
    finally:
        await client.aclose()
