"""The wire contract: every message that crosses Redis, typed, frozen and versioned.

Messages are encoded and decoded only in this module (MessagePack via msgspec; no pickle).
A queue entry that is not a valid message of a known type and supported version raises
:class:`~bot.errors.WireError`, which the consumer answers by dead-lettering the entry.
"""

from __future__ import annotations

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


ControlCommand = Literal["reset", "forget"]


class ControlRequest(_Message, frozen=True, tag="control"):
    """A command for the engine about a conversation: ``reset`` clears its context,
    ``forget`` deletes everything stored about ``user``."""

    id: str
    conversation: str
    reply_to: str
    command: ControlCommand
    user: str = ""
    created_ms: int = 0


Request = ChatRequest | ControlRequest


class Delta(_Message, frozen=True, tag="delta"):
    """A piece of a reply being generated; ``text`` is appended to what came before."""

    request_id: str
    seq: int
    text: str


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


ErrorCode = Literal["busy", "bad_request", "internal", "unavailable"]


class Error(_Message, frozen=True, tag="error"):
    """The final event of a request that could not be answered; ``message`` is for users."""

    request_id: str
    seq: int
    code: ErrorCode
    message: str


ReplyEvent = Delta | Done | Error


class Exchange(_Message, frozen=True, tag="exchange"):
    """One answered message, appended to the conversation log for the trainer."""

    request_id: str
    conversation: str
    platform: str
    user: str
    prompt: str
    reply: str
    model_version: str
    created_ms: int


_M = TypeVar("_M", bound=_Message)

_encoder = msgspec.msgpack.Encoder()
_request_decoder: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(Request)
_events_decoder: msgspec.msgpack.Decoder[list[ReplyEvent]] = msgspec.msgpack.Decoder(
    list[ReplyEvent]
)
_exchange_decoder = msgspec.msgpack.Decoder(Exchange)


def encode(message: _Message) -> bytes:
    """Encode any wire message to bytes."""
    return _encoder.encode(message)


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


def is_final(event: ReplyEvent) -> bool:
    """Whether ``event`` ends its request's reply."""
    return not isinstance(event, Delta)


_turn_decoder = msgspec.msgpack.Decoder(Turn)


def encode_turn(turn: Turn) -> bytes:
    """Encode one stored conversation turn (the history lists in Redis hold these)."""
    return _encoder.encode(turn)


def decode_turn(data: bytes) -> Turn:
    """Decode a stored turn, or raise :class:`WireError`."""
    try:
        return _turn_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise WireError(f"malformed stored turn: {e}") from e
