"""The per-chat pacer of the Telegram sender: calls to one chat are spaced, chats are not."""

from __future__ import annotations

import asyncio
import contextlib

from adapters.telegram.sender import ChatPacer


class Clock:
    """A clock that only moves when told to (the pacer's sleeps are real but zero here)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_chat_is_paced_and_others_are_not() -> None:
    clock = Clock()
    pacer = ChatPacer(clock)
    await pacer.wait(1, 3.0)
    await pacer.wait(2, 3.0)  # another chat: no wait

    waiting = asyncio.create_task(pacer.wait(1, 3.0))
    await asyncio.sleep(0)
    assert not waiting.done()  # chat 1 must wait its 3 s (a real sleep: cancelled here)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting


async def test_hold_after_a_429_lasts_at_least_as_asked() -> None:
    clock = Clock()
    pacer = ChatPacer(clock)
    await pacer.wait(1, 0.0)
    pacer.hold(1, 5.0)
    clock.now += 5.0
    await asyncio.wait_for(pacer.wait(1, 0.0), 1.0)  # the hold has passed: no wait
