"""What passes between the worker's event loop and the torch thread.

The event loop turns queue deliveries into :class:`Work` (request + stored history + any
spilled model state, all fetched from Redis up front); the torch thread turns work into
:class:`Output` items. Neither side touches the other's world: the torch thread never
calls Redis, the event loop never runs a model step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.queue import Delivery
from bot.wire import ChatRequest, ControlRequest, FinishReason, Turn


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
    replaces: tuple[bytes, ...] = ()
    """Stored turns this reply's exchange replaces (a regeneration's blocked exchange, left
    out of ``history``), as :meth:`bot.store.Stored.without` gave them."""


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
class Reply:
    """A finished reply: its text, token counts and timings (the worker makes the event)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    ttft_ms: float
    total_ms: float
    model_version: str


@dataclass(frozen=True)
class Finished:
    """``work`` is answered with ``reply``."""

    work: Work
    reply: Reply


Failure = Literal["unusable", "start_failed", "step_failed"]
"""Why the torch thread could not answer: the message itself is unusable (e.g. empty once
cleaned), reading it into the model failed, or a model step failed. The worker turns each
into the user's error event (:mod:`engine.replies`)."""


@dataclass(frozen=True)
class Failed:
    """``work`` could not be answered, because of ``failure``; ``detail`` says what exactly."""

    work: Work
    failure: Failure
    detail: str = ""


@dataclass(frozen=True)
class Spill:
    """Model state evicted from memory, to keep in Redis for a while."""

    conversation: str
    data: bytes


@dataclass(frozen=True)
class Applied:
    """The torch thread dropped what it caches for a control request; the worker deletes
    what the store holds, then answers and acknowledges it."""

    control: Control


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
    cache_bytes: int = 0
