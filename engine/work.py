"""What passes between the worker's event loop and the torch thread.

The event loop turns queue deliveries into :class:`Work` (request + stored history + any
spilled model state, all fetched from Redis up front); the torch thread turns work into
:class:`Output` items. Neither side touches the other's world: the torch thread never
calls Redis, the event loop never runs a model step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.queue import Delivery
from bot.wire import ChatRequest, ControlRequest, Done, Error, Turn


@dataclass(frozen=True)
class Work:
    """A chat request ready for the model."""

    delivery: Delivery
    request: ChatRequest
    history: tuple[Turn, ...]
    """The turns before ``request.text``: the client's own (OpenAI API) or the stored ones."""
    spilled_state: bytes | None = None
    """Model state spilled to Redis earlier, if any; the scheduler checks its version."""
    received_s: float = 0.0
    """``time.monotonic()`` when the worker read the request (queue time ends here)."""


@dataclass(frozen=True)
class Control:
    """A control request the torch thread must apply (e.g. drop cached state)."""

    delivery: Delivery
    request: ControlRequest


@dataclass(frozen=True)
class Progress:
    """New reply text since the last progress of ``work``."""

    work: Work
    text: str


@dataclass(frozen=True)
class Finished:
    """``work`` is answered; ``done`` is its final event (seq filled in by the worker)."""

    work: Work
    done: Done


@dataclass(frozen=True)
class Failed:
    """``work`` could not be answered; ``error`` is for the user."""

    work: Work | Control
    error: Error


@dataclass(frozen=True)
class Spill:
    """Model state evicted from memory, to keep in Redis for a while."""

    conversation: str
    data: bytes


@dataclass(frozen=True)
class Applied:
    """A control request was applied; the worker answers and acknowledges it."""

    control: Control
    message: str


Output = Progress | Finished | Failed | Spill | Applied


@dataclass
class Stats:
    """Counters the torch thread keeps and the heartbeat reports."""

    running: int = 0
    waiting: int = 0
    tokens_generated: int = 0
    cache_hits: int = 0
    cache_queries: int = 0
    model_version: str = ""
    extra: dict[str, float] = field(default_factory=dict)
