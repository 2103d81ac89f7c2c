"""A redelivered request that its new engine refuses as busy still gets that answer (real
Redis, the real adapter client, the events exactly as the engine builds them).

Engine A streams the start of a reply and dies; the request is reclaimed by engine B, which is
full and refuses it: a ``busy`` error, seq 0, and the request acknowledged. The adapter has
already seen seq 0 of that request (A's first delta), so unless the refusal says it belongs to
the newer delivery attempt it is dropped as a duplicate, the request is never answered, and
its user waits for the adapter's timeout instead of being told to try again.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from bot import keys, wire
from bot.queue import Delivery, Outgoing, ParleyClient
from bot.settings import RedisSettings
from bot.wire import ChatRequest, Error, ReplyEvent
from engine.serve.events import ReplyEvents
from engine.serve.work import Progress, Work
from tests.reliability.conftest import until

ADAPTER = "rel-refused"
TIMEOUT_S = 10.0
"""The adapter's reply timeout: what the user would wait for when the refusal is dropped."""


async def write(redis: aioredis.Redis, outgoing: Outgoing) -> None:
    """Append ``outgoing``'s events as the engine's writer does (one entry per batch)."""
    fields = {keys.EVENTS_FIELD: wire.encode_events(list(outgoing.events))}
    await redis.xadd(keys.reply_stream(outgoing.reply_to), fields)  # type: ignore[arg-type]


async def test_a_refused_redelivery_is_answered_busy(
    redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    request = ChatRequest(id="r1", conversation="web:x:x", reply_to=ADAPTER, text="hi")
    first = Delivery(0, "1-0", request, deliveries=1)
    again = Delivery(0, "1-0", request, deliveries=2)  # reclaimed after engine A died
    engine_a, engine_b = ReplyEvents(), ReplyEvents()
    seen: list[ReplyEvent] = []
    async with ParleyClient(redis, redis_settings, ADAPTER) as client:

        async def user() -> None:
            async for event in client.stream(request, timeout_s=TIMEOUT_S):
                seen.append(event)

        waiting = asyncio.create_task(user())
        await until(lambda: _true(client.in_flight == 1), timeout_s=10, what="the submit")
        delta = engine_a.progress(Progress(Work(first, request, ()), "hello there "))
        assert delta is not None and delta.seq == 0
        await write(redis, Outgoing([delta], ADAPTER))
        await until(lambda: _true(len(seen) == 1), timeout_s=10, what="engine A's delta")
        await write(redis, engine_b.busy(again))  # engine B is full
        await waiting

    final = seen[-1]
    assert isinstance(final, Error) and final.code == "busy", final


async def _true(value: bool) -> bool:
    return value
