"""The reliability suite's helpers: real processes, a Redis server of its own, a chatty model.

- :func:`chatty_checkpoint`: a tiny seeded GRU whose end-of-turn logit is pushed far down, so
  every reply runs to ``max_new_tokens`` — long enough to kill or pause an engine mid-reply.
- :class:`EngineProcess`: ``parley engine`` as a child process (``python -m bot.cli engine``),
  its output in a log file, ready once its heartbeat is in Redis.
- :class:`RedisServer`: a ``redis-server`` on a free port with its own directory and
  append-only persistence (``--appendonly yes --appendfsync everysec``), restartable on the
  same port and files.

Waiting is for a condition (:func:`until`), polled; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import redis.asyncio as aioredis
import torch

from bot import keys
from engine.checkpoint import save_checkpoint
from engine.models import build_model
from engine.tokenizer import train_char_tokenizer
from tests.reliability.logscan import SecretLog
from tests.unit.engine_fixtures import CONFIGS, CORPUS

PARLEY = [sys.executable, "-m", "bot.cli"]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str, poll_s: float = 0.05
) -> None:
    """Poll ``check`` until it is true; fail the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(poll_s)


def chatty_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A tiny GRU (seeded) that never samples end-of-turn: replies run to their length cap."""
    torch.manual_seed(seed)
    tokenizer = train_char_tokenizer(CORPUS)
    model = build_model(CONFIGS["gru"].with_vocab(tokenizer.vocab_size))
    with torch.no_grad():
        model.lm_head.bias[tokenizer.eot_id] = -1e4  # type: ignore[index]
    return save_checkpoint(
        directory, model, tokenizer, preset="test-chatty", metrics={}, provenance={}
    )


def parley_env(data_dir: Path, redis_url: str | None, **settings: str) -> dict[str, str]:
    """The environment of a child Parley process: no inherited ``PARLEY_*``, these settings
    (``engine__max_batch="4"`` becomes ``PARLEY_ENGINE__MAX_BATCH=4``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(REPO)
    if redis_url is not None:
        env["PARLEY_REDIS__URL"] = redis_url
    env.update({f"PARLEY_{name.upper()}": value for name, value in settings.items()})
    return env


ENGINE_SETTINGS = {
    "engine__dtype": "float32",
    "engine__torch_threads": "1",
    "engine__heartbeat_s": "0.2",
    "engine__read_block_ms": "20",
    "engine__stream_interval_ms": "20",
    "redis__shards": "2",
    "sampling__max_new_tokens_limit": "4000",
    "log_level": "INFO",
}


class EngineProcess:
    """One ``parley engine`` child process named ``worker_id``."""

    def __init__(
        self, worker_id: str, model: Path, redis_url: str, log_dir: Path, **settings: str
    ) -> None:
        self.worker_id = worker_id
        self.log_path = log_dir / f"engine-{worker_id}-{time.monotonic_ns()}.log"
        env = parley_env(
            log_dir / f"data-{worker_id}",
            redis_url,
            engine__model=str(model),
            engine__worker_id=worker_id,
            **{**ENGINE_SETTINGS, **settings},
        )
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*PARLEY, "engine"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    async def ready(self, redis: aioredis.Redis, timeout_s: float = 90.0) -> None:
        """Wait until this engine's heartbeat is in Redis (its model is loaded)."""

        async def beating() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"engine {self.worker_id} exited early:\n{self.output()}")
            return bool(await redis.hexists(keys.ENGINES, self.worker_id))

        await until(beating, timeout_s=timeout_s, what=f"engine {self.worker_id} to start")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGCONT (in case it is paused), SIGTERM, and wait; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def engines(tmp_path: Path, secret_log: SecretLog) -> Iterator[list[EngineProcess]]:
    """A list to put started :class:`EngineProcess` objects in; all are stopped at the end,
    and their output is scanned for test secrets."""
    started: list[EngineProcess] = []
    yield started
    for engine in started:
        engine.stop()
        secret_log.scan_text(engine.output(), f"engine {engine.worker_id}")


class RedisServer:
    """``redis-server`` with append-only persistence in ``directory``, on a fixed free port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not _answers_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.05)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        """Stop it: SIGTERM saves the append-only file first; SIGKILL does not."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout_s)
        self.proc = None

    def used_memory_mb(self) -> float:
        import redis

        with redis.Redis(port=self.port) as client:
            info = client.info("memory")
        return float(info["used_memory"]) / 2**20


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` of this test's own (stopped at the end)."""
    server = RedisServer(tmp_path / "redis-aof")
    server.start()
    try:
        yield server
    finally:
        server.stop()
