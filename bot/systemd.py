"""systemd's service notifications (the ``sd_notify`` protocol): READY, STOPPING, STATUS and
WATCHDOG, for units with ``Type=notify``.

systemd names a datagram socket in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
one) and, under ``WatchdogSec=``, the watchdog period in ``$WATCHDOG_USEC`` (for the process in
``$WATCHDOG_PID`` when that is set). Each notification is one datagram of ``KEY=value`` lines.
Outside systemd the variables are absent and every call here does nothing, so the same code
runs from a terminal.

The watchdog is pinged from a task on the event loop, at half the period systemd asked for: a
loop that is wedged (a blocking call, a busy coroutine) stops pinging and systemd restarts the
service. :func:`supervised` wraps a whole service: READY once it serves, STOPPING once it
drains, STATUS lines for both, and the watchdog for its whole life. :func:`instance_port`
gives each instance of a templated unit (``parley-engine@3``) a port of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping

from bot.errors import ConfigError

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to ``address`` (``None``: not under systemd, nothing is sent)."""

    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None) -> None:
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        if address is not None and not address.startswith(("/", "\0")):
            log.warning("NOTIFY_SOCKET=%r is not a unix socket; not notifying systemd", address)
            address = None
        self.address = address
        self.watchdog_usec = watchdog_usec if address is not None else None
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] = os.environ, *, pid: int | None = None
    ) -> Notifier:
        """The notifier systemd set up for this process (``pid``, default: this one)."""
        watchdog_usec: int | None = None
        usec, owner = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not owner or owner == str(pid or os.getpid())):
            watchdog_usec = int(usec)
        return cls(environ.get("NOTIFY_SOCKET") or None, watchdog_usec=watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often :meth:`keep_watchdog` pings: half of systemd's period (``None``: off)."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def send(self, **fields: str) -> None:
        """One notification (``send(READY="1", STATUS="serving")``). A failure is logged (the
        first of a run of them): a service keeps serving when systemd cannot be told."""
        if self.address is None:
            return
        lines = (f"{key}={' '.join(value.splitlines())}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as e:
            if not self._failing:  # once per run of failures: a watchdog pings often
                log.warning("cannot notify systemd (%s): %s", ", ".join(fields), e)
            self._failing = True
        else:
            self._failing = False

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def stopping(self, status: str) -> None:
        self.send(STOPPING="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def ping(self) -> None:
        self.send(WATCHDOG="1")

    async def keep_watchdog(self) -> None:
        """Ping the watchdog every :attr:`watchdog_interval_s` until cancelled; returns at
        once when systemd set no watchdog for this process."""
        interval_s = self.watchdog_interval_s
        if interval_s is None:
            return
        while True:
            self.ping()
            await asyncio.sleep(interval_s)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@contextlib.asynccontextmanager
async def watchdog(notifier: Notifier) -> AsyncIterator[Notifier]:
    """Ping ``notifier``'s watchdog from this event loop for the life of the block, then
    close its socket."""
    task = asyncio.create_task(notifier.keep_watchdog(), name="systemd-watchdog")
    try:
        yield notifier
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        notifier.close()


@contextlib.asynccontextmanager
async def supervised(
    ready: asyncio.Event,
    stop: asyncio.Event,
    *,
    name: str,
    notifier: Notifier | None = None,
) -> AsyncIterator[Notifier]:
    """Tell systemd about the service run inside the block: STATUS ``starting`` at once,
    READY when ``ready`` is set, STOPPING when ``stop`` is set, and watchdog pings throughout.
    ``notifier`` defaults to :meth:`Notifier.from_environment`."""
    notifier = notifier or Notifier.from_environment()
    notifier.status(f"{name}: starting")

    async def follow() -> None:
        waiters = [asyncio.create_task(event.wait()) for event in (ready, stop)]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not stop.is_set():
            notifier.ready(f"{name}: serving")
        await stop.wait()
        notifier.stopping(f"{name}: draining (finishing the replies in flight)")

    async with watchdog(notifier):
        task = asyncio.create_task(follow(), name="systemd-notify")
        try:
            yield notifier
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def instance_port(base: int | None, instance: int, default: int) -> int:
    """The port of instance ``instance`` of a templated unit: ``base + instance`` (``default``
    when no base is given). :class:`ConfigError` when that is past 65535."""
    if base is None:
        return default
    port = base + instance
    if port > 65535:
        raise ConfigError(
            f"instance {instance} has no metrics port: {base} + {instance} is past 65535; "
            "lower --metrics-port-base"
        )
    return port
