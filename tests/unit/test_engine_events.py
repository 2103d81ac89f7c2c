"""The worker's event-loop side without Redis: admission per conversation, and the one place
reply events are numbered and failures get their codes."""

from __future__ import annotations

import asyncio

from bot.queue import BUSY_MESSAGE, Delivery
from bot.wire import ChatRequest, ControlRequest, Delta, Done, Error, Sampling, Turn
from engine.serve.admission import Admission
from engine.serve.events import FAILURES, ReplyEvents
from engine.serve.work import Applied, Control, Failed, Finished, Progress, Reply, Spill, Work


def delivery(rid: str, conv: str, text: str = "hi") -> Delivery:
    return Delivery(
        0, f"0-{rid}", ChatRequest(id=rid, conversation=conv, reply_to="web", text=text)
    )


def work(rid: str, conv: str = "c", text: str = "hi") -> Work:
    d = delivery(rid, conv, text)
    assert isinstance(d.request, ChatRequest)
    return Work(d, d.request, ())


def reply(text: str) -> Reply:
    return Reply(text, "stop", 3, 2, 0.0, 1.0, 2.0, "v1")


def test_one_request_per_conversation_runs_the_rest_wait_in_order() -> None:
    a = Admission(limit=10)
    a1, a2, a3, b1 = (
        delivery("a1", "a"),
        delivery("a2", "a"),
        delivery("a3", "a"),
        delivery("b1", "b"),
    )
    admitted = a.admit([a1, a2, b1, a3])
    assert admitted.ready == [a1, b1] and admitted.refused == []
    assert a.in_flight == 4 and a.held == 2
    assert a.release(a1) == a2
    assert a.release(b1) is None
    assert a.release(a2) == a3
    assert a.release(a3) is None
    assert a.in_flight == 0


def test_requests_past_the_limit_are_refused() -> None:
    a = Admission(limit=2)
    admitted = a.admit([delivery("1", "a"), delivery("2", "a"), delivery("3", "b")])
    assert [d.request.id for d in admitted.ready] == ["1"]
    assert [d.request.id for d in admitted.refused] == ["3"]


async def test_wait_idle_returns_once_the_last_request_is_released() -> None:
    a = Admission(limit=4)
    d = delivery("1", "a")
    a.admit([d])
    waiting = asyncio.create_task(a.wait_idle(timeout_s=30))
    assert not await a.wait_idle(timeout_s=0)
    a.release(d)
    assert await waiting


def test_events_of_a_request_are_numbered_from_zero_in_order() -> None:
    events = ReplyEvents()
    w = work("r1")
    batch = events.batch([Progress(w, "he"), Progress(w, "llo"), Finished(w, reply("hello"))])
    sent = [e for item in batch.items for e in item.events]
    assert [type(e) for e in sent] == [Delta, Delta, Done]
    assert [e.seq for e in sent] == [0, 1, 2]
    done = sent[-1]
    assert isinstance(done, Done) and done.text == "hello" and done.model_version == "v1"
    assert batch.finished == [w.delivery]
    assert [(x.conversation, x.prompt, x.reply) for x in batch.exchanges] == [
        ("c", Turn("user", "hi"), Turn("bot", "hello"))
    ]
    exchange = batch.items[-1].exchange
    assert exchange is not None and exchange.reply == "hello"


def test_numbering_continues_across_batches_until_the_request_ends() -> None:
    events = ReplyEvents()
    w = work("r1")
    first = events.batch([Progress(w, "ab")])
    second = events.batch([Finished(w, reply("abc"))])
    assert [e.seq for i in (*first.items, *second.items) for e in i.events] == [0, 1]
    events.end("r1")  # left for reclaim: a redelivery starts again at 0
    again = events.batch([Progress(w, "ab")])
    assert again.items[0].events[0].seq == 0


def test_deltas_stream_only_what_the_final_reply_begins_with() -> None:
    """The final reply is the generated text cleaned; a stream cannot take text back."""
    events = ReplyEvents()
    w = work("r1")
    raw = ["  he", "llo  ", " wor", "ld "]
    batch = events.batch([Progress(w, t) for t in raw])
    deltas = [e.text for item in batch.items for e in item.events if isinstance(e, Delta)]
    assert deltas == ["h", "ello", " wo", "rld"]  # a last character waits for the next
    done = events.batch([Finished(w, reply("hello world"))]).items[0].events[0]
    assert isinstance(done, Done) and done.seq == len(deltas)


def test_deltas_hold_back_what_may_begin_a_stop_string() -> None:
    events = ReplyEvents()
    request = ChatRequest(
        id="r1", conversation="c", reply_to="web", text="hi", sampling=Sampling(stop=("END",))
    )
    w = Work(Delivery(0, "0-1", request), request, ())
    batch = events.batch([Progress(w, "ok E"), Progress(w, "N"), Progress(w, "D and on")])
    assert [e.text for item in batch.items for e in item.events] == ["ok"]


def test_each_failure_gets_its_code_and_message() -> None:
    events = ReplyEvents()
    failures = [Failed(work("r1"), "unusable", "the new message is empty once cleaned")]
    failures += [Failed(work(f"r{i}"), f) for i, f in enumerate(("start_failed", "step_failed"), 2)]
    batch = events.batch(failures)
    errors = [e for item in batch.items for e in item.events]
    assert all(isinstance(e, Error) and e.seq == 0 for e in errors)
    assert [(e.code, e.message) for e in errors if isinstance(e, Error)] == [
        ("bad_request", "Can't answer that: the new message is empty once cleaned."),
        FAILURES["start_failed"],
        FAILURES["step_failed"],
    ]
    assert len(batch.finished) == 3 and not batch.exchanges


def test_busy_controls_and_spills() -> None:
    events = ReplyEvents()
    busy = events.busy(delivery("r9", "x"))
    assert isinstance(busy.events[0], Error) and busy.events[0].code == "busy"
    assert busy.events[0].message == BUSY_MESSAGE and busy.ack is not None


def test_refusing_a_redelivery_leaves_the_running_requests_numbering_alone() -> None:
    events = ReplyEvents()
    w = work("r1")
    events.batch([Progress(w, "ab"), Progress(w, "cd")])  # seq 0 and 1 sent
    assert events.busy(w.delivery).events[0].seq == 0  # a duplicate the adapter drops
    done = events.batch([Finished(w, reply("abcd"))]).items[0].events[0]
    assert done.seq == 2


def test_controls_and_spills() -> None:
    events = ReplyEvents()
    req = ControlRequest(id="c1", conversation="c", reply_to="web", command="reset")
    control = Control(Delivery(0, "0-9", req), req)
    batch = events.batch([Applied(control), Spill("c", b"state")])
    assert batch.controls == [control] and batch.spills == [Spill("c", b"state")]
    done = batch.items[0].events[0]
    assert isinstance(done, Done) and done.finish_reason == "done" and "reset" in done.text
