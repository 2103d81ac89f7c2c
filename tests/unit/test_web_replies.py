"""``Replies``: every way a reply can end becomes exactly one final event, and is counted.

The queue client is a 20-line stand-in with :class:`bot.queue.ParleyClient`'s ``stream``
interface and its failure modes: a full queue or a timeout arrive as ``Error`` events, and
Redis failing while submitting raises :class:`~bot.errors.QueueError`; no Redis, no network.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from adapters.metrics import adapter_metrics
from adapters.replies import Replies
from adapters.web.chat import conversation_key, event_frame
from adapters.web.http import error_response, sse
from bot.errors import QueueError
from bot.safety import SafetyFilter
from bot.wire import ChatRequest, Delta, Done, Error, ReplyEvent, Request


class FakeClient:
    """Yields ``events`` for every request, then raises ``error`` if given."""

    def __init__(self, events: list[ReplyEvent], error: BaseException | None = None) -> None:
        self.events = events
        self.error = error
        self.closed = False
        self.timeouts: list[float] = []

    async def stream(self, request: Request, *, timeout_s: float) -> AsyncIterator[ReplyEvent]:
        self.timeouts.append(timeout_s)
        try:
            for event in self.events:
                yield event
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True


REQUEST = ChatRequest(id="r1", conversation="web:c:c", reply_to="web-1", text="hi")


def replies_for(client: FakeClient) -> tuple[Replies, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = adapter_metrics(registry)
    return Replies(client, adapter_id="web-1", timeout_s=9.0, metrics=metrics), registry


async def collect(replies: Replies, **kw: Any) -> list[ReplyEvent]:
    return [event async for event in replies.events(REQUEST, **kw)]


def outcome_count(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "parley_adapter_replies_total", {"adapter": "web-1", "outcome": outcome}
    )
    return value or 0.0


async def test_deltas_pass_through_then_done() -> None:
    events: list[ReplyEvent] = [
        Delta(request_id="r1", seq=0, text="a"),
        Delta(request_id="r1", seq=1, text="b"),
        Done(request_id="r1", seq=2, text="ab"),
    ]
    client = FakeClient(events)
    replies, registry = replies_for(client)
    assert await collect(replies) == events
    assert client.timeouts == [9.0] and client.closed
    assert outcome_count(registry, "done") == 1


async def test_events_after_the_final_one_are_not_passed_on() -> None:
    client = FakeClient(
        [Done(request_id="r1", seq=0, text=""), Delta(request_id="r1", seq=1, text="late")]
    )
    replies, _ = replies_for(client)
    assert [type(e) for e in await collect(replies, timeout_s=1.0)] == [Done]
    assert client.timeouts == [1.0] and client.closed


@pytest.mark.parametrize(
    ("error", "code", "outcome"),
    [
        (QueueError("redis is down"), "unavailable", "unavailable"),
        (None, "unavailable", "unavailable"),  # the stream ended without a final event
    ],
)
async def test_failures_become_one_final_error(
    error: BaseException | None, code: str, outcome: str
) -> None:
    client = FakeClient([Delta(request_id="r1", seq=0, text="a")], error)
    replies, registry = replies_for(client)
    events = await collect(replies)
    assert isinstance(events[0], Delta)
    (final,) = events[1:]
    assert isinstance(final, Error) and final.code == code and final.seq == 1
    assert final.message and "redis" not in final.message.lower()  # no internals to users
    assert outcome_count(registry, outcome) == 1


async def test_engine_errors_are_passed_on() -> None:
    error = Error(request_id="r1", seq=0, code="busy", message="busy now")
    replies, registry = replies_for(FakeClient([error]))
    assert await collect(replies) == [error]
    assert outcome_count(registry, "busy") == 1


async def test_closing_early_closes_the_client_stream() -> None:
    client = FakeClient([Delta(request_id="r1", seq=i, text="x") for i in range(10)])
    replies, _ = replies_for(client)
    events = replies.events(REQUEST)
    await anext(events)
    await events.aclose()
    await asyncio.sleep(0)
    assert client.closed


def test_error_response_shape() -> None:
    response = error_response(503, "busy now", code="busy")
    assert response.status == 503 and response.headers["Retry-After"]
    assert json.loads(response.text or "") == {
        "error": {"message": "busy now", "type": "server_error", "param": None, "code": "busy"}
    }
    bad = error_response(400, "no", code="x", param="messages")
    assert "Retry-After" not in bad.headers
    assert json.loads(bad.text or "")["error"]["type"] == "invalid_request_error"


def test_sse_frames() -> None:
    assert sse("delta", {"text": "a\nb"}) == b'event: delta\ndata: {"text": "a\\nb"}\n\n'
    frame = event_frame(Error(request_id="r", seq=0, code="busy", message="m"))
    assert frame == b'event: error\ndata: {"code": "busy", "message": "m"}\n\n'
    assert conversation_key("abc12345") == "web:abc12345:abc12345"


def test_metrics_register_once_per_registry() -> None:
    registry = CollectorRegistry()
    assert adapter_metrics(registry) is adapter_metrics(registry)
    assert adapter_metrics(CollectorRegistry()) is not adapter_metrics(registry)


async def test_the_safety_filter_masks_streamed_and_final_text() -> None:
    deltas = ["You ", "darn ", "fool, ", "darn", "ed thing"]
    full = "".join(deltas)
    events: list[ReplyEvent] = [
        Delta(request_id="r1", seq=i, text=text) for i, text in enumerate(deltas)
    ]
    events.append(Done(request_id="r1", seq=len(deltas), text=full))
    registry = CollectorRegistry()
    replies = Replies(
        FakeClient(events),
        adapter_id="web-1",
        timeout_s=9.0,
        metrics=adapter_metrics(registry),
        safety=SafetyFilter(blocklist=["darn"]),
    )
    got = await collect(replies)
    streamed = "".join(e.text for e in got if isinstance(e, Delta))
    assert "darn " not in streamed and "darn," not in streamed
    assert full.replace("darn ", "**** ").startswith(streamed)
    assert isinstance(got[-1], Done) and got[-1].text == "You **** fool, darned thing"
    blocked = registry.get_sample_value(
        "parley_adapter_replies_filtered_total", {"adapter": "web-1", "reason": "blocklist"}
    )
    assert blocked == 1.0
