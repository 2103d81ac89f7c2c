"""Real ``parley`` processes tell systemd what they do: READY once they serve, WATCHDOG pings
from their event loop while they serve, STOPPING when they drain, over ``$NOTIFY_SOCKET``.

The socket is a local AF_UNIX datagram socket standing in for systemd's; the processes are
the installed ``parley`` command against the test Redis, the engine with a tiny CPU model.
:class:`ParleyProcess` is also what the multi-worker integration test starts its fleet with.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from tests.unit.engine_fixtures import tiny_checkpoint

PARLEY = Path(sys.executable).parent / "parley"
WATCHDOG_USEC = 100_000
"""A short watchdog period, so several pings arrive while a test watches."""
STARTUP_S = 120.0
"""A bound on waiting, never an expectation: a loaded CI machine imports torch slowly."""


def parley_env(data_dir: Path, redis_url: str, **settings: str) -> dict[str, str]:
    """This environment without any Parley or systemd variable, plus ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PARLEY_") and k not in {"NOTIFY_SOCKET", "WATCHDOG_USEC"}
    }
    env.update(PARLEY_DATA_DIR=str(data_dir), PARLEY_REDIS__URL=redis_url, **settings)
    return env


def engine_settings(model: Path, **more: str) -> dict[str, str]:
    return {
        "PARLEY_ENGINE__MODEL": str(model),
        "PARLEY_ENGINE__DEVICE": "cpu",
        "PARLEY_ENGINE__DTYPE": "float32",
        "PARLEY_ENGINE__TORCH_THREADS": "1",
        **more,
    }


T = TypeVar("T")


async def until(changed: asyncio.Condition, check: Callable[[], T | None], timeout_s: float) -> T:
    """Wait on ``changed`` until ``check()`` returns something other than ``None``."""
    async with asyncio.timeout(timeout_s), changed:
        while (result := check()) is None:
            await changed.wait()
        return result


class ParleyProcess:
    """``parley <args>`` as a child process (through ``wrapper``, a command that execs its
    arguments, when given) with its own notify socket. Its log lines are
    collected in :attr:`lines`; each new line (and its exit) notifies ``changed``, which
    several processes may share."""

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        workdir: Path,
        *,
        changed: asyncio.Condition | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        self.args = args
        self.wrapper = wrapper or []
        self.env = dict(env)
        self.workdir = workdir
        self.socket_dir = tempfile.TemporaryDirectory(prefix="sd-")
        self.notify_path = str(Path(self.socket_dir.name) / "notify")
        self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_sock.bind(self.notify_path)
        self.notify_sock.setblocking(False)
        self.received: list[dict[str, str]] = []
        self._consumed = 0
        self._notifications: asyncio.Task[None] | None = None
        self.lines: list[str] = []
        self.changed = changed or asyncio.Condition()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> ParleyProcess:
        env = {**self.env, "NOTIFY_SOCKET": self.notify_path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        self.proc = await asyncio.create_subprocess_exec(
            *self.wrapper,
            str(PARLEY),
            *self.args,
            env=env,
            cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_lines())
        self._notifications = asyncio.create_task(self._read_notifications())
        return self

    @property
    def exited(self) -> bool:
        return self._reader is not None and self._reader.done()

    def log(self) -> str:
        return f"parley {' '.join(self.args)}:\n" + "\n".join(self.lines)

    async def _read_lines(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            async with self.changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self.changed.notify_all()
        async with self.changed:
            self.changed.notify_all()

    async def wait_for_line(self, pattern: str, timeout_s: float = STARTUP_S) -> re.Match[str]:
        """The first log line (from the start) that matches ``pattern``."""

        def check() -> re.Match[str] | None:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            if self.exited:
                raise AssertionError(f"exited without logging {pattern!r}: {self.log()}")
            return None

        return await until(self.changed, check, timeout_s)

    def _drain_notifications(self) -> None:
        """Read every datagram queued on the notify socket (a full queue would drop some)."""
        while True:
            try:
                data = self.notify_sock.recv(4096)
            except BlockingIOError:
                return
            self.received.append(dict(x.split("=", 1) for x in data.decode().split("\n")))

    async def _read_notifications(self) -> None:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(self.notify_sock, ready.set)
        try:
            while True:
                await ready.wait()
                ready.clear()
                async with self.changed:
                    self._drain_notifications()
                    self.changed.notify_all()
        finally:
            loop.remove_reader(self.notify_sock)

    async def notified(self, key: str, timeout_s: float = STARTUP_S) -> list[dict[str, str]]:
        """The notifications since the last call up to the first carrying ``key``; fails with
        the log if the process exits without sending it."""

        def check() -> list[dict[str, str]] | None:
            if self.exited:
                self._drain_notifications()  # what it sent before exiting is queued
            for i in range(self._consumed, len(self.received)):
                if key in self.received[i]:
                    seen = self.received[self._consumed : i + 1]
                    self._consumed = i + 1
                    return seen
            if self.exited:
                raise AssertionError(f"no {key}: {self.log()}")
            return None

        return await until(self.changed, check, timeout_s)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout_s):
            code = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return code

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
        if self._notifications is not None:
            self._notifications.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._notifications
        self.notify_sock.close()
        self.socket_dir.cleanup()


@pytest.fixture
async def processes() -> AsyncIterator[list[ParleyProcess]]:
    """Append :class:`ParleyProcess` objects here; whatever still runs is killed after (and
    each one's log printed, which pytest shows when the test failed)."""
    started: list[ParleyProcess] = []
    yield started
    for p in started:
        await p.close()
        print(p.log())


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "tiny", "gru").path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def keys_in_order(notifications: list[dict[str, str]]) -> list[str]:
    return [key for n in notifications for key in n if key != "STATUS"]


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    # Its own directory, so no ./parley.toml is picked up.
    path = tmp_path / "work"
    path.mkdir()
    yield path


async def test_engine_is_ready_pings_and_stops(
    redis: object, redis_url: str, model: Path, workdir: Path, processes: list[ParleyProcess]
) -> None:
    port = free_port()
    env = parley_env(workdir, redis_url, **engine_settings(model, PARLEY_REDIS__SHARDS="2"))
    args = ["engine", "--instance", "3", "--metrics-port-base", str(port - 3)]
    engine = await ParleyProcess(args, env, workdir).start()
    processes.append(engine)
    starting = await engine.notified("READY")
    serving = await engine.notified("WATCHDOG")
    # The metrics port is the base plus the instance.
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
    engine.signal(signal.SIGTERM)
    stopping = await engine.notified("STOPPING")
    assert await engine.wait() == 0, engine.log()
    assert starting[0] == {"STATUS": "engine worker: starting"}
    assert keys_in_order(starting)[-1] == "READY"
    assert starting[-1]["STATUS"] == "engine worker: serving"
    assert keys_in_order(serving) == ["WATCHDOG"]
    assert keys_in_order(stopping)[-1] == "STOPPING"


async def test_web_adapter_is_ready_pings_and_stops(
    redis: object, redis_url: str, workdir: Path, processes: list[ParleyProcess]
) -> None:
    port = free_port()
    env = parley_env(workdir, redis_url)
    web = await ParleyProcess(["adapter", "web", "--port", str(port)], env, workdir).start()
    processes.append(web)
    starting = await web.notified("READY")
    serving = await web.notified("WATCHDOG")
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as page:
        assert page.status == 200
    # The unit stops adapters with SIGINT (KillSignal=SIGINT): Python turns it into a
    # cancellation, so the adapter closes its connections and says STOPPING.
    web.signal(signal.SIGINT)
    stopping = await web.notified("STOPPING")
    assert await web.wait() == 130, web.log()
    assert keys_in_order(starting)[-1] == "READY"
    assert f":{port}" in starting[-1]["STATUS"]
    assert keys_in_order(serving) == ["WATCHDOG"]
    assert keys_in_order(stopping)[-1] == "STOPPING"


async def test_parley_run_without_web_is_ready_pings_and_stops(
    model: Path, workdir: Path, processes: list[ParleyProcess]
) -> None:
    # No Redis URL: `parley run` starts its embedded server; READY once the engine serves.
    env = parley_env(workdir, "", **engine_settings(model))
    del env["PARLEY_REDIS__URL"]
    run = await ParleyProcess(["run", "--no-web"], env, workdir).start()
    processes.append(run)
    starting = await run.notified("READY")
    serving = await run.notified("WATCHDOG")
    run.signal(signal.SIGTERM)
    stopping = await run.notified("STOPPING")
    assert await run.wait() == 0, run.log()
    assert starting[0] == {"STATUS": "parley run: starting"}
    assert starting[-1] == {"READY": "1", "STATUS": "parley run: serving"}
    assert keys_in_order(serving) == ["WATCHDOG"]
    assert keys_in_order(stopping)[-1] == "STOPPING"


async def test_trainer_is_ready_pings_and_stops(
    redis: object, redis_url: str, workdir: Path, processes: list[ParleyProcess]
) -> None:
    env = parley_env(workdir, redis_url)
    trainer = await ParleyProcess(["trainer"], env, workdir).start()
    processes.append(trainer)
    starting = await trainer.notified("READY")
    serving = await trainer.notified("WATCHDOG")
    trainer.signal(signal.SIGTERM)
    stopping = await trainer.notified("STOPPING")
    assert await trainer.wait() == 0, trainer.log()
    assert starting[0] == {"STATUS": "trainer: starting"}
    assert keys_in_order(starting)[-1] == "READY"
    assert keys_in_order(serving) == ["WATCHDOG"]
    assert keys_in_order(stopping)[-1] == "STOPPING"


IGNORING_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]
"""Starts its arguments with SIGINT ignored, as a shell starts a background job."""


async def test_an_adapter_started_ignoring_sigint_still_stops_on_it(
    redis: object, redis_url: str, workdir: Path, processes: list[ParleyProcess]
) -> None:
    port = free_port()
    env = parley_env(workdir, redis_url)
    web = ParleyProcess(
        ["adapter", "web", "--port", str(port)], env, workdir, wrapper=IGNORING_SIGINT
    )
    processes.append(await web.start())
    await web.notified("READY")
    web.signal(signal.SIGINT)
    await web.notified("STOPPING")
    assert await web.wait() == 130, web.log()
