"""The wire contract: every message that crosses Redis, typed, frozen and versioned.

Messages are encoded and decoded only in this module (MessagePack via msgspec; no pickle).
A queue entry that is not a valid message of a known type and supported version raises
:class:`~bot.errors.WireError`, which the consumer answers by dead-lettering the entry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, TypeVar

import msgspec

from bot.errors import WireError

WIRE_VERSION = 1
"""Bumped on an incompatible change; decoders refuse newer versions than they know."""

Role = Literal["user", "bot", "system"]


class _Message(msgspec.Struct, frozen=True, tag_field="type", kw_only=True):
    v: int = WIRE_VERSION


class Turn(msgspec.Struct, frozen=True):
    """One turn of a conversation: who spoke and what they said."""

    role: Role
    text: str


class Sampling(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """Per-request sampling options; ``None`` means the engine's default.

    The engine clamps every value to the bounds its admin set.
    """

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


class ChatRequest(_Message, frozen=True, tag="chat"):
    """A user's message for the model to answer.

    ``id`` is derived from the platform's own ids so a redelivered message is recognised;
    ``conversation`` is the context key (``platform:chat:user`` by default); replies go to
    the reply stream of adapter instance ``reply_to``. ``history``, when given, is the
    whole conversation before ``text`` as the client sees it (the OpenAI API sends it);
    when ``None`` the engine uses the conversation's stored history.

    ``regenerates`` names the request whose reply the safety filter blocked (its
    ``regenerate`` action, :mod:`bot.safety`): this request asks again for a reply to that
    same message, and the engine leaves that request's stored exchange out of the prompt
    and replaces it with this one's instead of appending. An engine that predates the
    field ignores it and appends.
    """

    id: str
    conversation: str
    reply_to: str
    text: str
    user: str = ""
    platform: str = "web"
    sampling: Sampling = Sampling()
    history: tuple[Turn, ...] | None = None
    created_ms: int = 0
    regenerates: str = ""

    @property
    def answers(self) -> str:
        """The id of the user's message this request answers: its own, or for a regeneration
        the original request's (what the stored turns and the archive's rows are keyed by)."""
        return self.regenerates or self.id


ControlCommand = Literal["reset", "forget", "amend"]


class ControlRequest(_Message, frozen=True, tag="control"):
    """A command for the engine about a conversation: ``reset`` clears its context,
    ``forget`` deletes everything stored about ``user``, ``amend`` makes the stored reply to
    message ``target`` read ``text`` (what the user was shown instead: the safety filter's
    replacement after every regenerated reply was blocked too) and drops the cached state
    that read the original."""

    id: str
    conversation: str
    reply_to: str
    command: ControlCommand
    user: str = ""
    created_ms: int = 0
    target: str = ""
    text: str = ""


Request = ChatRequest | ControlRequest


class Delta(_Message, frozen=True, tag="delta"):
    """A piece of a reply being generated; ``text`` is appended to what came before.

    ``attempt`` (on every reply event) is the request's delivery count when the engine
    answered it: a request reclaimed from a dead or stalled engine is answered again as a
    higher attempt, and the adapter's client never joins two attempts' text
    (:class:`bot.queue.ParleyClient`)."""

    request_id: str
    seq: int
    text: str
    attempt: int = 1


FinishReason = Literal["stop", "length", "done"]


class Done(_Message, frozen=True, tag="done"):
    """The final event of a reply: its whole text, token counts and timings."""

    request_id: str
    seq: int
    text: str
    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_ms: float = 0.0
    ttft_ms: float = 0.0
    total_ms: float = 0.0
    model_version: str = ""
    attempt: int = 1


ErrorCode = Literal["busy", "bad_request", "internal", "unavailable"]


class Error(_Message, frozen=True, tag="error"):
    """The final event of a request that could not be answered; ``message`` is for users."""

    request_id: str
    seq: int
    code: ErrorCode
    message: str
    attempt: int = 1


ReplyEvent = Delta | Done | Error


class Exchange(_Message, frozen=True, tag="exchange"):
    """One answered message, appended to the conversation log for the trainer.

    ``regenerates``: this exchange answers again the message of that request, whose reply
    the safety filter blocked; the archive keeps this reply in its place
    (:meth:`bot.archive.Archive.add_exchanges`)."""

    request_id: str
    conversation: str
    platform: str
    user: str
    prompt: str
    reply: str
    model_version: str
    created_ms: int
    regenerates: str = ""


# --- The trainer service (bot/trainer) -------------------------------------------------------

TrainerCommand = Literal["retrain", "forget", "optout", "optin"]


class TrainerRequest(_Message, frozen=True, tag="trainer"):
    """A request for the trainer service: ``retrain`` (admins; the adapter checked), or a
    consent change of ``user``: ``forget`` deletes their archived messages and log entries,
    ``optout`` / ``optin`` decide whether their messages are archived at all. Answers go to
    :func:`bot.keys.trainer_replies` of ``id``."""

    id: str
    command: TrainerCommand
    platform: str = ""
    user: str = ""
    from_scratch: bool = False
    """``retrain`` only: start from fresh weights instead of the live model's."""
    created_ms: int = 0


class Feedback(_Message, frozen=True, tag="feedback"):
    """A user's 👍 (``1``) or 👎 (``-1``) on a bot reply, ``0`` when withdrawn; the reply is
    named by the request id it answered (``Done.request_id``, ``Exchange.request_id``)."""

    request_id: str
    platform: str
    user: str
    value: Literal[-1, 0, 1]
    created_ms: int = 0


TrainerMessage = TrainerRequest | Feedback


class TrainerReply(_Message, frozen=True, tag="trainer_reply"):
    """The trainer's answer to a consent request; ``message`` says what was done."""

    request_id: str
    ok: bool
    message: str


JobStatus = Literal["queued", "running", "published", "kept", "failed"]
"""``published``: the new version is live; ``kept``: it did not beat the live one."""


class JobUpdate(_Message, frozen=True, tag="job", omit_defaults=True):
    """Where a retrain job is: sent to everyone who asked for it and kept in
    :data:`bot.keys.TRAIN_PROGRESS` for the dashboard. ``final`` ends the job's updates."""

    job_id: str
    status: JobStatus
    request_id: str = ""
    step: int = 0
    steps: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    message: str = ""
    version: str = ""
    live_version: str = ""
    live_bpc: float | None = None
    new_bpc: float | None = None
    samples: tuple[tuple[str, str], ...] = ()
    """(prompt, reply) pairs sampled from the new model."""
    final: bool = False
    time: float = 0.0


# --- Engine heartbeats (bot/engines) ---------------------------------------------------------

HEARTBEAT_FRESH_S = 10.0
"""An engine whose last heartbeat is older than this is taken for dead."""


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """An engine worker's report of itself, every few seconds, in :data:`bot.keys.ENGINES`.

    Encoded as JSON (:func:`encode_heartbeat`) so ``redis-cli HGETALL parley:engines`` stays
    readable; fields a reader does not know are ignored.
    """

    worker: str
    time: float
    """Unix time of the report."""
    model_version: str = ""
    running: int = 0
    waiting: int = 0
    tokens_per_s: float = 0.0
    tokens_generated: int | None = None
    """A running total; the dashboard derives tokens/s from it when ``tokens_per_s`` is 0."""
    cache_hits: int = 0
    cache_queries: int = 0
    cache_bytes: int = 0
    v: int = WIRE_VERSION

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.time)

    def alive(self, now: float) -> bool:
        return self.age_s(now) < HEARTBEAT_FRESH_S


_M = TypeVar("_M", bound=_Message)

_encoder = msgspec.msgpack.Encoder()
_request_decoder: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(Request)
_events_decoder: msgspec.msgpack.Decoder[list[ReplyEvent]] = msgspec.msgpack.Decoder(
    list[ReplyEvent]
)
_exchange_decoder = msgspec.msgpack.Decoder(Exchange)


def encode(message: _Message) -> bytes:
    """Encode any wire message to bytes.

    Text that UTF-8 cannot carry — a lone surrogate, which a JSON ``\\ud800`` escape from a
    platform or a client can smuggle into a Python string — travels with U+FFFD in its place,
    so such a message is still answered instead of failing to encode.
    """
    try:
        return _encoder.encode(message)
    except UnicodeEncodeError:
        cleaned = _without_surrogates(msgspec.to_builtins(message))
        return _encoder.encode(msgspec.convert(cleaned, type(message)))


_SURROGATE = re.compile("[\ud800-\udfff]")
"""A surrogate code point in a Python string is always a lone one (pairs are one code point)."""


def _without_surrogates(value: object) -> object:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_surrogates(v) for v in value]
    return value


def encode_events(events: Sequence[ReplyEvent]) -> bytes:
    """Encode several reply events as one array (one reply-stream entry)."""
    return _encoder.encode(list(events))


def _decode(decoder: msgspec.msgpack.Decoder[_M], data: bytes) -> _M:
    try:
        message = decoder.decode(data)
    except msgspec.DecodeError as e:
        raise WireError(f"malformed wire message: {e}") from e
    return _supported(message)


def _supported(message: _M) -> _M:
    if message.v > WIRE_VERSION:
        raise WireError(f"wire version {message.v} is newer than supported {WIRE_VERSION}")
    return message


def decode_request(data: bytes) -> Request:
    """Decode a request-stream entry, or raise :class:`WireError`."""
    return _decode(_request_decoder, data)


def decode_events(data: bytes) -> list[ReplyEvent]:
    """Decode a reply-stream entry (:func:`encode_events`), or raise :class:`WireError`."""
    try:
        events = _events_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise WireError(f"malformed wire message: {e}") from e
    return [_supported(event) for event in events]


def decode_exchange(data: bytes) -> Exchange:
    """Decode a conversation-log entry, or raise :class:`WireError`."""
    return _decode(_exchange_decoder, data)


_trainer_decoder: msgspec.msgpack.Decoder[TrainerMessage] = msgspec.msgpack.Decoder(TrainerMessage)
_trainer_answer_decoder: msgspec.msgpack.Decoder[TrainerReply | JobUpdate] = (
    msgspec.msgpack.Decoder(TrainerReply | JobUpdate)
)
_job_json_encoder = msgspec.json.Encoder()
_job_json_decoder = msgspec.json.Decoder(JobUpdate)


def decode_trainer_message(data: bytes) -> TrainerMessage:
    """Decode a trainer-request-stream entry, or raise :class:`WireError`."""
    return _decode(_trainer_decoder, data)


def decode_trainer_answer(data: bytes) -> TrainerReply | JobUpdate:
    """Decode an entry of a :func:`bot.keys.trainer_replies` stream, or raise WireError."""
    return _decode(_trainer_answer_decoder, data)


def encode_job_line(update: JobUpdate) -> bytes:
    """A job update as one JSON line: how a retrain child process reports to its trainer."""
    return _job_json_encoder.encode(update) + b"\n"


def decode_job_line(line: bytes) -> JobUpdate:
    """Decode :func:`encode_job_line`'s output, or raise :class:`WireError`."""
    try:
        update = _job_json_decoder.decode(line)
    except msgspec.DecodeError as e:
        raise WireError(f"malformed job update line: {e}") from e
    return _supported(update)


def is_final(event: ReplyEvent) -> bool:
    """Whether ``event`` ends its request's reply."""
    return not isinstance(event, Delta)


class StoredTurn(msgspec.Struct, frozen=True, omit_defaults=True):
    """A turn as the conversation store keeps it: a :class:`Turn`'s fields, and the id of
    the message whose exchange it belongs to (``ChatRequest.answers``; empty in turns stored
    before the field existed), so a regenerated reply can replace its exchange. Encoded with
    an empty id it is byte for byte a :class:`Turn`, and a :class:`Turn` decoder reads it."""

    role: Role
    text: str
    request_id: str = ""

    @property
    def turn(self) -> Turn:
        return Turn(self.role, self.text)


_turn_decoder = msgspec.msgpack.Decoder(Turn)
_stored_turn_decoder = msgspec.msgpack.Decoder(StoredTurn)


def encode_turn(turn: Turn, request_id: str = "") -> bytes:
    """Encode one stored conversation turn (the history lists in Redis hold these), tagged
    with the id of the message whose exchange it belongs to."""
    return _encoder.encode(StoredTurn(turn.role, turn.text, request_id))


def decode_stored_turn(data: bytes) -> StoredTurn:
    """Decode a stored turn with its request id, or raise :class:`WireError`."""
    try:
        return _stored_turn_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise WireError(f"malformed stored turn: {e}") from e


def decode_turn(data: bytes) -> Turn:
    """Decode a stored turn, or raise :class:`WireError`."""
    try:
        return _turn_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise WireError(f"malformed stored turn: {e}") from e


def encode_heartbeat(beat: Heartbeat) -> bytes:
    """Encode an engine heartbeat (JSON)."""
    return _json_encoder.encode(beat)


def decode_heartbeat(data: bytes | str) -> Heartbeat:
    """Decode an engine heartbeat, or raise :class:`WireError`."""
    try:
        beat = _heartbeat_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise WireError(f"malformed heartbeat: {e}") from e
    if beat.v > WIRE_VERSION:
        raise WireError(f"heartbeat version {beat.v} is newer than supported {WIRE_VERSION}")
    return beat


_json_encoder = msgspec.json.Encoder()
_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)
