"""Stopping ``parley run`` under load (SIGTERM, or Ctrl-C's SIGINT): the replies in flight are
finished and delivered, then it exits 0 with no traceback.

``parley run`` is the real command (engine, web adapter, trainer in one process) on the test
Redis, serving a tiny model whose replies run to their length cap, so every user is mid-reply
when the signal lands (each has seen the start of its reply)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.reliability.conftest import PARLEY, chatty_checkpoint, free_port, parley_env, until

pytestmark = pytest.mark.timeout(300)

USERS = 6
STEP_S = 120.0


async def chat(http: aiohttp.ClientSession, url: str, n: int, started: asyncio.Event) -> list[str]:
    """One chat-page request; the SSE event names it received."""
    names: list[str] = []
    body = {"conversation": f"shutdown{n:04d}", "text": "hello there"}
    async with http.post(f"{url}/api/chat", json=body) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
                started.set()
    return names


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
async def test_stopping_under_load_finishes_the_replies_in_flight(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path, sig: signal.Signals
) -> None:
    port = free_port()
    env = parley_env(
        tmp_path / "data",
        redis_url,
        engine__model=str(chatty_checkpoint(tmp_path / "chatty")),
        engine__dtype="float32",
        engine__stream_interval_ms="20",
        sampling__max_new_tokens="400",
        web__port=str(port),
    )
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*PARLEY, "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP_S)) as http:

            async def ready() -> bool:
                assert proc.poll() is None, log_path.read_text()
                try:
                    async with http.get(f"{url}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await until(ready, timeout_s=STEP_S, what="parley run to serve")
            started = [asyncio.Event() for _ in range(USERS)]
            calls = [asyncio.create_task(chat(http, url, n, started[n])) for n in range(USERS)]
            async with asyncio.timeout(STEP_S):
                await asyncio.gather(*(s.wait() for s in started))  # all mid-reply
            proc.send_signal(sig)
            async with asyncio.timeout(STEP_S):
                replies = await asyncio.gather(*calls)
        returncode = await asyncio.to_thread(proc.wait, STEP_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text(errors="replace")
    for names in replies:
        assert names[-1] == "done" and names.count("done") == 1, (names, output[-3000:])
        assert "error" not in names and names[0] == "delta", names  # it was mid-reply
    assert returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
