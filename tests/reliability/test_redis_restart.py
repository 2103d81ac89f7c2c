"""Redis restarted under load, with persistence on (append-only file, fsync every second).

A real ``parley engine`` process and the adapters' real queue client run against a
``redis-server`` of the test's own. While users chat, Redis is stopped (SIGTERM: it writes its
append-only file) and started again on the same port and files. What users see: a request
sent while Redis is down is refused at once with a clear error (the client raises
:class:`QueueError`, which every adapter answers "not available"); every request Redis took
gets exactly one final reply, a ``Done`` — requests the engine was answering when Redis went
away are answered again after it comes back. Nothing is logged twice.

Killed instead (SIGKILL), Redis loses up to its last second of writes (``everysec``): a request
it had taken may be gone. Its user still gets exactly one final event — a reply, or
"not answering" when the reply timeout passes — never silence and never two.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from bot import keys, wire
from bot.errors import QueueError
from bot.queue import ParleyClient
from bot.redis import connect
from bot.settings import RedisSettings
from bot.wire import ChatRequest, Done, Sampling
from tests.reliability.conftest import EngineProcess, RedisServer, chatty_checkpoint, until

pytestmark = pytest.mark.timeout(300)

ADAPTER = "rel-restart"
USERS = 8
STEP_S = 120.0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
async def test_redis_restarted_under_load_loses_no_accepted_request(
    redis_server: RedisServer, tmp_path: Path, engines: list[EngineProcess], how: signal.Signals
) -> None:
    timeout_s = STEP_S if how == signal.SIGTERM else 15.0
    settings = RedisSettings(url=redis_server.url, shards=2, claim_idle_ms=1000)
    model = chatty_checkpoint(tmp_path / "chatty")
    engine = EngineProcess(
        "restart-e", model, redis_server.url, tmp_path, redis__claim_idle_ms="1000"
    )
    engines.append(engine)
    redis = await connect(redis_server.url)
    await engine.ready(redis)

    finals: dict[str, list[wire.ReplyEvent]] = {}
    refused: list[str] = []
    answered = Counter[str]()
    stop = asyncio.Event()

    async def user(client: ParleyClient, n: int) -> None:
        i = 0
        while not stop.is_set():
            request = ChatRequest(
                id=f"u{n}-{i}",
                conversation=f"web:r{n}:r{n}",
                reply_to=ADAPTER,
                text=f"message {i}",
                sampling=Sampling(max_new_tokens=60, seed=i),
            )
            i += 1
            try:
                events = [e async for e in client.stream(request, timeout_s=timeout_s)]
            except QueueError:
                refused.append(request.id)
                await asyncio.sleep(0.05)  # a real user retries after a moment
                continue
            finals[request.id] = [e for e in events if wire.is_final(e)]
            answered["all"] += 1

    async def answered_at_least(n: int) -> bool:
        return answered["all"] >= n

    async with ParleyClient(redis, settings, ADAPTER) as client:
        users = [asyncio.create_task(user(client, n)) for n in range(USERS)]
        await until(lambda: answered_at_least(USERS), timeout_s=STEP_S, what="first replies")
        before = answered["all"]
        redis_server.stop(how)  # SIGTERM: Redis writes its append-only file first
        probe = ChatRequest(id="probe", conversation="web:p:p", reply_to=ADAPTER, text="hi")
        with pytest.raises(QueueError):  # sent while Redis is down: refused at once
            await anext(client.stream(probe, timeout_s=timeout_s))
        redis_server.start()
        await until(
            lambda: answered_at_least(before + 2 * USERS), timeout_s=STEP_S, what="later replies"
        )
        stop.set()
        async with asyncio.timeout(STEP_S):
            await asyncio.gather(*users)
    try:
        for request_id, events in finals.items():
            assert len(events) == 1, (request_id, events)  # exactly one final reply
            if how == signal.SIGTERM or isinstance(events[0], Done):
                assert isinstance(events[0], Done), (request_id, events[0])  # an answer
            else:  # lost in the crash: told so after the timeout
                assert events[0].code == "unavailable", (request_id, events[0])
        logged = [
            wire.decode_exchange(fields[keys.FIELD.encode()]).request_id
            for _id, fields in await redis.xrange(keys.LOG_STREAM)
        ]
        assert len(logged) == len(set(logged)), "an exchange was logged twice"
        done = {rid for rid, events in finals.items() if isinstance(events[0], Done)}
        if how == signal.SIGTERM:
            assert done == set(finals) and done <= set(logged)
        assert engine.proc.poll() is None, "the engine died with Redis"
    finally:
        await redis.aclose()
