"""A reclaimed request's streamed text never mixes two attempts (real Redis, real client).

Two engines can answer one request: the first stalls past ``claim_idle_ms``, another reclaims
it and answers again, and the first may wake up and carry on. Each numbers its events from 0,
so de-duplicating by ``(request id, seq)`` alone joined the first attempt's start to the
second's continuation. The events here are written to the reply stream exactly as two engines
write them (one entry per batch), and the adapter side is the real :class:`ParleyClient`
feeding the real reply pump, which is what a Discord or Telegram user sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from adapters.pump import StreamedReply, pump
from bot import keys, wire
from bot.queue import ParleyClient
from bot.settings import RedisSettings
from bot.wire import ChatRequest, Delta, Done, Error, ReplyEvent
from tests.reliability.conftest import until

ADAPTER = "rel-stream"


@dataclass
class Screen:
    """A chat platform's view of one reply: every text the message showed, in order."""

    shown: list[str] = field(default_factory=list)

    async def send(self, text: str, *, first: bool) -> int:
        self.shown.append(text)
        return 0

    async def edit(self, handle: int, text: str) -> None:
        self.shown.append(text)


def delta(seq: int, text: str, attempt: int) -> Delta:
    return Delta(request_id="r1", seq=seq, text=text, attempt=attempt)


def done(seq: int, text: str, attempt: int) -> Done:
    return Done(request_id="r1", seq=seq, text=text, attempt=attempt)


async def write(redis: aioredis.Redis, *events: ReplyEvent) -> None:
    await redis.xadd(keys.reply_stream(ADAPTER), {keys.EVENTS_FIELD: wire.encode_events(events)})


async def watch(
    redis: aioredis.Redis, settings: RedisSettings, entries: list[list[ReplyEvent]]
) -> tuple[list[ReplyEvent], Screen, Done | Error | None]:
    """Stream request ``r1`` through a client and the pump while ``entries`` are written."""
    request = ChatRequest(id="r1", conversation="web:x:x", reply_to=ADAPTER, text="hi")
    screen = Screen()
    reply: StreamedReply[int] = StreamedReply(screen, limit=2000, interval_s=0.0)
    seen: list[ReplyEvent] = []
    async with ParleyClient(redis, settings, ADAPTER) as client:

        async def events() -> AsyncIterator[ReplyEvent]:
            async for event in client.stream(request, timeout_s=10):
                seen.append(event)
                yield event

        showing = asyncio.create_task(pump(reply, events()))
        await until(lambda: _true(client.in_flight == 1), timeout_s=10, what="the submit")
        for entry in entries:
            await write(redis, *entry)
        final = await showing
    return seen, screen, final


async def _true(value: bool) -> bool:
    return value


async def test_a_stale_attempt_never_continues_the_text(
    redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    entries: list[list[ReplyEvent]] = [
        [delta(0, "Hel", 1), delta(1, "lo ", 1)],  # engine A starts, then stalls
        [delta(0, "Goo", 2), delta(1, "d ", 2)],  # engine B reclaimed it: attempt 2
        [delta(2, "the", 1)],  # A wakes up and goes on
        [delta(2, "day", 2), done(3, "Good day", 2)],
        [delta(3, "re", 1), done(4, "Hello there", 1)],
    ]
    seen, screen, final = await watch(redis, redis_settings, entries)
    assert isinstance(final, Done) and final.text == "Good day" and final.attempt == 2
    streamed = [e for e in seen if isinstance(e, Delta)]
    assert {e.attempt for e in streamed} == {1}  # one attempt's deltas only
    assert "".join(e.text for e in streamed) == "Hello "  # A's text, never joined to B's
    assert [e for e in seen if wire.is_final(e)] == [final]  # exactly one final event
    assert screen.shown[-1] == "Good day"  # the message ends as the answer, whole
    assert all(text in ("Hel", "Hello", "Good day") for text in screen.shown), screen.shown


async def test_a_later_attempt_streams_when_the_first_sent_nothing(
    redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    entries: list[list[ReplyEvent]] = [
        [delta(0, "Goo", 2)],  # A died before its first delta; B answers
        [delta(1, "d day", 2), done(2, "Good day", 2)],
        [delta(0, "Hel", 1), done(1, "Hello", 1)],  # a late write of the dead attempt
    ]
    seen, screen, final = await watch(redis, redis_settings, entries)
    assert isinstance(final, Done) and final.text == "Good day"
    assert "".join(e.text for e in seen if isinstance(e, Delta)) == "Good day"
    assert screen.shown[-1] == "Good day"


async def test_the_first_final_event_wins_and_later_ones_are_dropped(
    redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    entries: list[list[ReplyEvent]] = [
        [delta(0, "Hel", 1)],
        [delta(1, "lo", 1), done(2, "Hello", 1)],  # A finishes before B is heard from
        [delta(0, "Goo", 2), done(1, "Good", 2)],
    ]
    seen, _screen, final = await watch(redis, redis_settings, entries)
    assert isinstance(final, Done) and final.text == "Hello" and final.attempt == 1
    assert [e for e in seen if wire.is_final(e)] == [final]
