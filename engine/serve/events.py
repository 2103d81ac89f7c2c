"""Reply events: the one place the engine numbers a request's events and picks error codes.

The torch thread reports what happened (:mod:`engine.serve.work`: progress text, a
finished :class:`~engine.serve.work.Reply`, a :data:`~engine.serve.work.Failure`, an applied
control request);
:class:`ReplyEvents` turns each into the wire event the adapter receives (``Delta`` /
``Done`` / ``Error``), numbered ``0, 1, 2 …`` per request, and sorts a batch of outputs into
what the worker writes in one transaction (:class:`Batch`).

A stream cannot take text back, and the finished reply is the generated text cut at its
first stop string and cleaned (:func:`~engine.data.formatting.clean_text`: spaces tidied,
NFC, no markers), which is not always how the raw text began (a leading or doubled space,
say). So deltas carry only the start of the final reply that the text so far already fixes
(its clean prefix, :class:`~engine.data.formatting.CleanStream`, before any stop string:
:func:`before_stop`), and what the deltas streamed is always a beginning of ``Done.text``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.queue import BUSY_MESSAGE, Delivery, Outgoing
from bot.wire import ChatRequest, ControlCommand, Delta, Done, Error, ErrorCode, Exchange, Turn
from engine.data.formatting import CleanStream
from engine.serve.work import Applied, Control, Failed, Failure, Finished, Output, Progress, Spill

FAILURES: dict[Failure, tuple[ErrorCode, str]] = {
    "unusable": ("bad_request", "Can't answer that: {detail}."),
    "start_failed": ("internal", "Something went wrong reading this message."),
    "step_failed": ("internal", "Something went wrong generating this reply."),
}
"""Each failure's error code and user-facing message (``{detail}`` is the failure's)."""

CONTROL_MESSAGES: dict[ControlCommand, str] = {
    "reset": "Conversation reset: I've forgotten what we talked about.",
    "forget": "Done: everything stored about you has been deleted.",
    "amend": "Done: the stored reply was amended.",
}
"""The answer to each applied control request."""


@dataclass(frozen=True, slots=True)
class StoredExchange:
    """An answered message, for the conversation store."""

    conversation: str
    user: str
    prompt: Turn
    reply: Turn
    request_id: str = ""
    answers: str = ""
    """The message the exchange answers (``ChatRequest.answers``): its stored turns' tag."""
    replaces: tuple[bytes, ...] = ()
    """Stored turns it replaces (a regenerated reply's blocked exchange)."""


@dataclass(slots=True)
class Batch:
    """One batch of outputs, sorted for one write: ``items`` for the queue, ``exchanges`` and
    ``spills`` for the store (in the same transaction), ``controls`` to apply before it, and
    the deliveries that are ``finished`` once it is written (or has failed)."""

    items: list[Outgoing] = field(default_factory=list)
    exchanges: list[StoredExchange] = field(default_factory=list)
    spills: list[Spill] = field(default_factory=list)
    controls: list[Control] = field(default_factory=list)
    finished: list[Delivery] = field(default_factory=list)
    replies: list[Finished] = field(default_factory=list)
    """The finished replies (for the one log line each)."""

    def without(self, lost: Sequence[Delivery]) -> Batch:
        """This batch less what answers the ``lost`` requests (another worker took them
        over and answers them): nothing of theirs is written; they still finish here."""
        ids = {d.request.id for d in lost}
        return Batch(
            items=[i for i in self.items if not any(e.request_id in ids for e in i.events)],
            exchanges=[x for x in self.exchanges if x.request_id not in ids],
            spills=self.spills,
            controls=[c for c in self.controls if c.request.id not in ids],
            finished=self.finished,
            replies=[r for r in self.replies if r.work.request.id not in ids],
        )


class ReplyEvents:
    """Numbers every request's events and builds the batch a worker writes."""

    def __init__(self) -> None:
        self._next_seq: dict[str, int] = {}
        self._streams: dict[str, _Streamed] = {}

    def batch(self, outputs: Sequence[Output]) -> Batch:
        """Sort ``outputs`` into one :class:`Batch`, each event numbered."""
        b = Batch()
        for out in outputs:
            if isinstance(out, Progress):
                delta = self.progress(out)
                if delta is not None:
                    b.items.append(Outgoing([delta], out.work.request.reply_to))
            elif isinstance(out, Finished):
                b.items.append(self.finished(out))
                req = out.work.request
                asked, answered = Turn("user", req.text), Turn("bot", out.reply.text)
                stored = StoredExchange(
                    req.conversation,
                    req.user,
                    asked,
                    answered,
                    req.id,
                    answers=req.answers,
                    replaces=out.work.replaces,
                )
                b.exchanges.append(stored)
                b.finished.append(out.work.delivery)
                b.replies.append(out)
            elif isinstance(out, Failed):
                code, message = FAILURES[out.failure]
                d = out.work.delivery
                b.items.append(self.error(d, code, message.format(detail=out.detail)))
                b.finished.append(d)
            elif isinstance(out, Applied):
                d = out.control.delivery
                b.controls.append(out.control)
                b.items.append(self.done(d, CONTROL_MESSAGES[out.control.request.command]))
                b.finished.append(d)
            else:
                b.spills.append(out)
        return b

    def busy(self, delivery: Delivery) -> Outgoing:
        """The answer to a request refused because the worker is full: its only event, so
        seq 0, outside the numbering (a refused redelivery of a request still running here
        must not disturb that request's numbering), of the delivery's attempt: the adapter
        has seen seq 0 of an earlier attempt whenever that one streamed, and drops only a
        duplicate of the attempt it follows, so a refused redelivery takes over from it."""
        rid, attempt = delivery.request.id, delivery.deliveries
        error = Error(request_id=rid, seq=0, code="busy", message=BUSY_MESSAGE, attempt=attempt)
        return Outgoing([error], delivery.request.reply_to, ack=delivery)

    def end(self, request_id: str) -> None:
        """The request is done (answered, or left for reclaim): forget its numbering."""
        self._next_seq.pop(request_id, None)
        self._streams.pop(request_id, None)

    # -- one event each ----------------------------------------------------------------

    def _seq(self, request_id: str) -> int:
        seq = self._next_seq.get(request_id, 0)
        self._next_seq[request_id] = seq + 1
        return seq

    def progress(self, out: Progress) -> Delta | None:
        """The delta for ``out``: what its text newly settles of the final reply, if anything."""
        req = out.work.request
        stream = self._streams.setdefault(req.id, _Streamed())
        stream.generated += out.text
        settled = stream.clean.prefix(before_stop(stream.generated, req.sampling.stop))
        if len(settled) <= stream.sent:
            return None
        delta = self.delta(req.id, settled[stream.sent :], out.work.delivery.deliveries)
        stream.sent = len(settled)
        return delta

    def delta(self, request_id: str, text: str, attempt: int = 1) -> Delta:
        # attempt: the delivery count, so the adapter never joins two attempts' text.
        seq = self._seq(request_id)
        return Delta(request_id=request_id, seq=seq, text=text, attempt=attempt)

    def finished(self, out: Finished) -> Outgoing:
        req: ChatRequest = out.work.request
        r = out.reply
        done = Done(
            request_id=req.id,
            seq=self._seq(req.id),
            text=r.text,
            finish_reason=r.finish_reason,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            queue_ms=r.queue_ms,
            ttft_ms=r.ttft_ms,
            total_ms=r.total_ms,
            model_version=r.model_version,
            attempt=out.work.delivery.deliveries,
        )
        exchange = Exchange(
            request_id=req.id,
            conversation=req.conversation,
            platform=req.platform,
            user=req.user,
            prompt=req.text,
            reply=r.text,
            model_version=r.model_version,
            created_ms=req.created_ms or int(time.time() * 1000),
            regenerates=req.regenerates,
        )
        return Outgoing([done], req.reply_to, ack=out.work.delivery, exchange=exchange)

    def error(self, d: Delivery, code: ErrorCode, message: str) -> Outgoing:
        rid = d.request.id
        seq, attempt = self._seq(rid), d.deliveries
        error = Error(request_id=rid, seq=seq, code=code, message=message, attempt=attempt)
        return Outgoing([error], d.request.reply_to, ack=d)

    def done(self, d: Delivery, message: str) -> Outgoing:
        rid = d.request.id
        seq, attempt = self._seq(rid), d.deliveries
        done = Done(request_id=rid, seq=seq, text=message, finish_reason="done", attempt=attempt)
        return Outgoing([done], d.request.reply_to, ack=d)


@dataclass(slots=True)
class _Streamed:
    """A request's raw text so far, and how much of its settled text was sent as deltas."""

    generated: str = ""
    sent: int = 0
    clean: CleanStream = field(default_factory=CleanStream)


def before_stop(generated: str, stops: Sequence[str]) -> str:
    """The part of ``generated`` (a reply's raw text so far) that no stop string can cut from
    the finished reply: before the first stop string, and before a tail that may begin one.
    The scheduler finishes a reply as ``clean_text`` of its text cut at the first stop string,
    so the deltas are the clean prefix (:class:`CleanStream`) of this."""
    stops = [s for s in stops if s]
    cut = min((i for s in stops if (i := generated.find(s)) >= 0), default=len(generated))
    text = generated[:cut]
    longest = max((len(s) for s in stops), default=0)
    for i in range(max(0, len(text) - longest + 1), len(text)):
        if any(s.startswith(text[i:]) for s in stops):
            return text[:i]
    return text
