"""An engine paused (SIGSTOP) mid-reply past the reclaim timeout, then resumed.

Two real ``parley engine`` processes split the shards. Engine A is stopped with SIGSTOP as
soon as the user has seen the start of its reply; after its shard lease expires, engine B
takes the shard, reclaims the request (``claim_idle_ms``) and answers it again as attempt 2;
then A is resumed (SIGCONT) and carries on with attempt 1. What the user sees (the real
:class:`ParleyClient`): exactly one final reply, and streamed text from one attempt only,
never one attempt's start joined to another's continuation. What is stored: the exchange
once in the conversation's history.

(``kill -9`` of an engine mid-reply is tests/integration/test_multi_worker.py.)
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot import keys, wire
from bot.queue import ParleyClient
from bot.settings import RedisSettings
from bot.wire import ChatRequest, Delta, Done, ReplyEvent, Sampling
from tests.reliability.conftest import EngineProcess, chatty_checkpoint, until

pytestmark = pytest.mark.timeout(300)

ADAPTER = "rel-pause"
SHARDS = 2
CLAIM_IDLE_MS = 1000
STEP_S = 120.0
"""A bound on each wait, never an expectation."""


async def lease_holders(redis: aioredis.Redis) -> list[str | None]:
    values = [await redis.get(keys.shard_lease(s)) for s in range(SHARDS)]
    return [v.decode() if v else None for v in values]


def conversation_on(shard: int) -> str:
    n = 0
    while keys.shard_for(f"web:p{n}:p{n}", SHARDS) != shard:
        n += 1
    return f"web:p{n}:p{n}"


async def owner(redis: aioredis.Redis, shard: int) -> str | None:
    rows = await redis.xpending_range(keys.request_stream(shard), keys.ENGINE_GROUP, "-", "+", 10)
    return rows[0]["consumer"].decode() if rows else None


async def idle(redis: aioredis.Redis, worker: str) -> bool:
    raw = await redis.hget(keys.ENGINES, worker)
    if raw is None:
        return False
    beat = json.loads(raw)
    return beat.get("running", 0) == 0 and beat.get("waiting", 0) == 0


async def raw_events(redis: aioredis.Redis, request_id: str) -> list[ReplyEvent]:
    """Every event written for ``request_id`` to the adapter's reply stream, by any engine."""
    found: list[ReplyEvent] = []
    for _id, fields in await redis.xrange(keys.reply_stream(ADAPTER)):
        for event in wire.decode_events(fields[keys.EVENTS_FIELD.encode()]):
            if event.request_id == request_id:
                found.append(event)
    return found


def attempt_text(events: list[ReplyEvent], attempt: int) -> str:
    deltas = sorted(
        (e for e in events if isinstance(e, Delta) and e.attempt == attempt), key=lambda e: e.seq
    )
    return "".join(e.text for e in deltas)


async def test_a_paused_engine_s_request_is_answered_once_in_one_attempt_s_words(
    redis: aioredis.Redis,
    redis_url: str,
    redis_settings: RedisSettings,
    tmp_path: Path,
    engines: list[EngineProcess],
) -> None:
    model = chatty_checkpoint(tmp_path / "chatty")
    settings = {"redis__claim_idle_ms": str(CLAIM_IDLE_MS), "redis__shards": str(SHARDS)}
    a = EngineProcess("pause-a", model, redis_url, tmp_path, **settings)
    engines.append(a)
    await a.ready(redis)
    b = EngineProcess("pause-b", model, redis_url, tmp_path, **settings)
    engines.append(b)
    await b.ready(redis)

    async def split() -> bool:
        return set(await lease_holders(redis)) == {"pause-a", "pause-b"}

    await until(split, timeout_s=STEP_S, what="the two engines to split the shards")
    shard = (await lease_holders(redis)).index("pause-a")
    request = ChatRequest(
        id="paused-1",
        conversation=conversation_on(shard),
        reply_to=ADAPTER,
        text="hello there",
        sampling=Sampling(temperature=1.0, seed=3, max_new_tokens=1500),
    )
    queue = redis_settings.model_copy(update={"shards": SHARDS})
    seen: list[ReplyEvent] = []
    async with ParleyClient(redis, queue, ADAPTER) as client:
        async with asyncio.timeout(STEP_S * 3):
            async for event in client.stream(request, timeout_s=STEP_S):
                seen.append(event)
                if len(seen) == 1:
                    assert isinstance(event, Delta), event  # A is mid-reply
                    a.signal(signal.SIGSTOP)

                    async def taken_by_b() -> bool:
                        return await owner(redis, shard) == "pause-b"

                    await until(taken_by_b, timeout_s=STEP_S, what="engine B to reclaim it")
                    a.signal(signal.SIGCONT)
        await until(lambda: idle(redis, "pause-a"), timeout_s=STEP_S, what="A to finish")
        await until(lambda: idle(redis, "pause-b"), timeout_s=STEP_S, what="B to finish")

    finals = [e for e in seen if wire.is_final(e)]
    assert len(finals) == 1 and isinstance(finals[0], Done), finals
    streamed = [e for e in seen if isinstance(e, Delta)]
    assert len({e.attempt for e in streamed}) == 1, "deltas of two attempts were joined"
    written = await raw_events(redis, request.id)
    assert {e.attempt for e in written} >= {1, 2}, "the request was not answered twice"
    shown = "".join(e.text for e in streamed)
    assert attempt_text(written, streamed[0].attempt).startswith(shown)
    assert finals[0].attempt in {1, 2}
    # Stored once: one exchange in the history, whichever attempt it came from.
    assert await redis.llen(keys.history(request.conversation)) == 2
    assert await redis.xlen(keys.request_stream(shard)) == 0
