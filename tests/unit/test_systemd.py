"""bot.systemd against a real AF_UNIX datagram socket, as systemd listens on one."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.systemd import Notifier, instance_port, supervised, watchdog


class Listener:
    """The systemd side: a datagram socket that collects notifications."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    async def next(self) -> dict[str, str]:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 4096)
        return dict(line.split("=", 1) for line in data.decode().split("\n"))

    async def until(self, key: str, timeout_s: float = 30.0) -> list[dict[str, str]]:
        """Every notification up to and including the first that carries ``key``."""
        seen = []
        async with asyncio.timeout(timeout_s):
            while not seen or key not in seen[-1]:
                seen.append(await self.next())
        return seen


@pytest.fixture
def socket_path() -> Iterator[str]:
    # A short directory: a unix socket path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sd-") as d:
        yield str(Path(d) / "notify")


@pytest.fixture
def listener(socket_path: str) -> Iterator[Listener]:
    listener = Listener(socket_path)
    yield listener
    listener.sock.close()


async def test_ready_status_stopping_and_ping(listener: Listener, socket_path: str) -> None:
    notifier = Notifier(socket_path)
    notifier.ready("serving\non two lines")
    notifier.status("half way")
    notifier.ping()
    notifier.stopping("draining")
    notifier.close()
    assert await listener.next() == {"READY": "1", "STATUS": "serving on two lines"}
    assert await listener.next() == {"STATUS": "half way"}
    assert await listener.next() == {"WATCHDOG": "1"}
    assert await listener.next() == {"STOPPING": "1", "STATUS": "draining"}


async def test_abstract_socket_address() -> None:
    name = f"parley-test-{id(object())}"
    listener = Listener("\0" + name)
    try:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("up")
        assert await listener.next() == {"READY": "1", "STATUS": "up"}
    finally:
        listener.sock.close()


def test_outside_systemd_nothing_is_enabled() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    notifier.ready("no socket: nothing is sent and nothing fails")


def test_unsupported_address_is_not_used() -> None:
    assert not Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_watchdog_interval_is_half_the_period_and_only_for_its_pid(socket_path: str) -> None:
    env = {"NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "3000000"}
    assert Notifier.from_environment(env).watchdog_interval_s == 1.5
    assert Notifier.from_environment({**env, "WATCHDOG_PID": "42"}, pid=42).watchdog_usec
    assert Notifier.from_environment({**env, "WATCHDOG_PID": "42"}, pid=43).watchdog_usec is None
    assert Notifier.from_environment({**env, "WATCHDOG_USEC": "x"}).watchdog_usec is None


def test_a_vanished_socket_is_logged_not_raised(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    Notifier(socket_path).ready("nobody listens")
    assert "cannot notify systemd" in caplog.text


async def test_watchdog_pings_until_the_block_ends(listener: Listener, socket_path: str) -> None:
    notifier = Notifier(socket_path, watchdog_usec=20_000)
    async with watchdog(notifier):
        assert await listener.next() == {"WATCHDOG": "1"}
        assert await listener.next() == {"WATCHDOG": "1"}
    notifier.status("after")  # the pinging task is gone: the next datagram is this one
    assert await listener.next() == {"STATUS": "after"}


async def test_supervised_sends_ready_then_stopping(listener: Listener, socket_path: str) -> None:
    ready, stop = asyncio.Event(), asyncio.Event()
    notifier = Notifier(socket_path, watchdog_usec=10_000)
    async with supervised(ready, stop, name="svc", notifier=notifier):
        before = await listener.until("WATCHDOG")
        ready.set()
        serving = await listener.until("READY")
        pings = await listener.until("WATCHDOG")
        stop.set()
        stopping = await listener.until("STOPPING")
    assert before[0] == {"STATUS": "svc: starting"}
    assert not any("READY" in n for n in before)
    assert serving[-1] == {"READY": "1", "STATUS": "svc: serving"}
    assert pings[-1] == {"WATCHDOG": "1"}
    assert stopping[-1]["STATUS"].startswith("svc: draining")


async def test_supervised_stopped_before_ready_never_says_ready(
    listener: Listener, socket_path: str
) -> None:
    ready, stop = asyncio.Event(), asyncio.Event()
    async with supervised(ready, stop, name="svc", notifier=Notifier(socket_path)):
        stop.set()
        ready.set()
        seen = await listener.until("STOPPING")
    assert not any("READY" in n for n in seen)


def test_instance_port() -> None:
    assert instance_port(None, 7, 0) == 0
    assert instance_port(None, 7, 9100) == 9100
    assert instance_port(9400, 0, 0) == 9400
    assert instance_port(9400, 12, 0) == 9412
    assert instance_port(65000, 535, 0) == 65535
    with pytest.raises(ConfigError, match="past 65535"):
        instance_port(65000, 536, 0)


async def test_a_run_of_failures_is_logged_once(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(socket_path)
    for _ in range(3):
        notifier.ping()
    assert caplog.text.count("cannot notify systemd") == 1
    listener = Listener(socket_path)
    try:
        notifier.ping()  # a success ends the run
        assert await listener.next() == {"WATCHDOG": "1"}
    finally:
        listener.sock.close()
    Path(socket_path).unlink()
    notifier.ping()
    assert caplog.text.count("cannot notify systemd") == 2
