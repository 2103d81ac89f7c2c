"""Process runtime: logging, signal handling, and the runtime file that lets ``parley chat``
find a running ``parley run`` (embedded server included) without flags."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bot.errors import NotRunning
from bot.settings import Settings

log = logging.getLogger(__name__)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Libraries that log every request at INFO drown out the one line per message we write.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def stop_event_on_signals() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM, so services drain instead of dying mid-request."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    return stop


@dataclass(frozen=True)
class RuntimeInfo:
    """What a running ``parley run`` tells other local commands about itself."""

    pid: int
    redis_url: str
    web_url: str | None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def runtime_file(path: Path, info: RuntimeInfo) -> Iterator[None]:
    """Write ``info`` to ``path`` for the life of the block (0600: it holds a Redis URL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info)))
    tmp.chmod(0o600)
    os.replace(tmp, path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if read_runtime_file(path) == info:
                path.unlink()


def read_runtime_file(path: Path) -> RuntimeInfo | None:
    try:
        data = json.loads(path.read_text())
        return RuntimeInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def find_redis_url(settings: Settings) -> str:
    """The Redis URL of the running system: the setting, else the one ``parley run`` wrote."""
    if settings.redis.url:
        return settings.redis.url
    info = read_runtime_file(settings.runtime_file)
    if info is None or not _pid_alive(info.pid):
        raise NotRunning(
            "no running Parley found: start one with `parley run` "
            "(or point PARLEY_REDIS_URL at the Redis your Parley uses)"
        )
    return info.redis_url
