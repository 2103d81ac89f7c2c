"""Which requests a worker lets through: one per conversation at a time, a bounded total.

A conversation's next message is answered from the state its previous reply left, so two of
its requests never run at once: the second is *held* (in arrival order) until the first is
released. A request beyond the worker's capacity is *refused* (the adapter says "busy").
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.queue import Delivery


@dataclass(slots=True)
class Admitted:
    """What :meth:`Admission.admit` made of a read: run these, refuse those."""

    ready: list[Delivery] = field(default_factory=list)
    refused: list[Delivery] = field(default_factory=list)


class Admission:
    """Requests in flight per conversation, and those held behind them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: dict[str, str] = {}  # conversation -> request id
        self._held: dict[str, deque[Delivery]] = defaultdict(deque)
        self._held_count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Requests running or held."""
        return len(self._running) + self._held_count

    @property
    def held(self) -> int:
        return self._held_count

    def admit(self, deliveries: Sequence[Delivery]) -> Admitted:
        """Let each delivery run, hold it behind its conversation's, or refuse it (full)."""
        out = Admitted()
        for d in deliveries:
            conv = d.request.conversation
            if self.in_flight >= self.limit:
                out.refused.append(d)
            elif conv in self._running:
                self._held[conv].append(d)
                self._held_count += 1
            else:
                self._running[conv] = d.request.id
                out.ready.append(d)
        if self.in_flight:
            self._idle.clear()
        return out

    def release(self, delivery: Delivery) -> Delivery | None:
        """``delivery`` is done (answered, or left for reclaim): the next request held for its
        conversation, now running, if there is one."""
        conv = delivery.request.conversation
        if self._running.get(conv) == delivery.request.id:
            del self._running[conv]
        held = self._held.get(conv)
        nxt = None
        if held and conv not in self._running:
            nxt = held.popleft()
            self._held_count -= 1
            if not held:
                del self._held[conv]
            self._running[conv] = nxt.request.id
        if not self.in_flight:
            self._idle.set()
        return nxt

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; whether that happened within ``timeout_s``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
