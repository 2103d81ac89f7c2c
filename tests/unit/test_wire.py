"""The wire contract: every message type survives a round trip; anything else is a WireError."""

from __future__ import annotations

import msgspec
import pytest

from bot import wire
from bot.errors import WireError
from bot.wire import (
    ChatRequest,
    ControlRequest,
    Delta,
    Done,
    Error,
    Exchange,
    Sampling,
    Turn,
)

CHAT = ChatRequest(
    id="tg:42:1001",
    conversation="telegram:42:7",
    reply_to="telegram-1",
    text="héllo 你好 👋",
    user="7",
    platform="telegram",
    sampling=Sampling(
        temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=50, seed=1, stop=("\n\n",)
    ),
    history=(Turn("user", "hi"), Turn("bot", "hello!")),
    created_ms=1_700_000_000_000,
)
CONTROL = ControlRequest(
    id="c1", conversation="discord:1:2", reply_to="discord-1", command="forget", user="2"
)
DELTA = Delta(request_id="r1", seq=0, text="Hel")
DONE = Done(
    request_id="r1",
    seq=3,
    text="Hello",
    finish_reason="length",
    prompt_tokens=5,
    completion_tokens=7,
    queue_ms=0.5,
    ttft_ms=12.0,
    total_ms=80.0,
    model_version="v3",
)
ERROR = Error(request_id="r1", seq=0, code="busy", message="try later")
EXCHANGE = Exchange(
    request_id="r1",
    conversation="web:a:b",
    platform="web",
    user="b",
    prompt="hi",
    reply="hello",
    model_version="v3",
    created_ms=1,
)


@pytest.mark.parametrize(
    "request_", [CHAT, CONTROL, ChatRequest(id="a", conversation="b", reply_to="c", text="")]
)
def test_requests_round_trip(request_: wire.Request) -> None:
    assert wire.decode_request(wire.encode(request_)) == request_


@pytest.mark.parametrize("events", [[DELTA], [DONE], [ERROR], [DELTA, DONE, ERROR], []])
def test_events_round_trip_as_one_entry(events: list[wire.ReplyEvent]) -> None:
    assert wire.decode_events(wire.encode_events(events)) == events


def test_a_reply_entry_must_be_an_array_of_events() -> None:
    with pytest.raises(WireError):
        wire.decode_events(wire.encode(DELTA))  # one event is not an array of them
    with pytest.raises(WireError):
        wire.decode_events(wire.encode_events([DELTA])[:-2])  # truncated
    with pytest.raises(WireError, match="newer"):
        newer = msgspec.structs.replace(DONE, v=wire.WIRE_VERSION + 1)
        wire.decode_events(wire.encode_events([DELTA, newer]))


def test_exchange_round_trips() -> None:
    assert wire.decode_exchange(wire.encode(EXCHANGE)) == EXCHANGE


def test_only_delta_is_not_final() -> None:
    assert not wire.is_final(DELTA)
    assert wire.is_final(DONE) and wire.is_final(ERROR)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte MessagePack never uses
        b"not msgpack at all",
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode({"type": "chat", "id": "x"}),  # required fields missing
        msgspec.msgpack.encode(
            {"type": "chat", "id": 1, "conversation": "c", "reply_to": "r", "text": "t"}
        ),  # wrong field type
        wire.encode(CHAT)[:-3],  # truncated
    ],
)
def test_malformed_bytes_are_a_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        wire.decode_request(data)
    with pytest.raises(WireError):
        wire.decode_events(data)
    with pytest.raises(WireError):  # the same inside a reply entry's array
        wire.decode_events(b"\x91" + data)  # 0x91: an array of one


def test_unknown_tag_is_a_wire_error() -> None:
    data = msgspec.msgpack.encode({"type": "teleport", "id": "x"})
    with pytest.raises(WireError):
        wire.decode_request(data)
    with pytest.raises(WireError):
        wire.decode_events(b"\x91" + data)


def test_message_of_the_wrong_kind_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        wire.decode_request(wire.encode(DONE))  # an event on a request stream
    with pytest.raises(WireError):
        wire.decode_events(b"\x91" + wire.encode(CHAT))  # a request on a reply stream
    with pytest.raises(WireError):
        wire.decode_exchange(wire.encode(CHAT))


@pytest.mark.parametrize("message", [CHAT, CONTROL, DELTA, DONE, ERROR, EXCHANGE])
def test_newer_version_is_a_wire_error(message: msgspec.Struct) -> None:
    newer = msgspec.structs.replace(message, v=wire.WIRE_VERSION + 1)
    decode = {
        ChatRequest: wire.decode_request,
        ControlRequest: wire.decode_request,
        Exchange: wire.decode_exchange,
    }.get(type(message), lambda data: wire.decode_events(b"\x91" + data))
    with pytest.raises(WireError, match="newer"):
        decode(wire.encode(newer))  # type: ignore[arg-type]


def test_unknown_extra_fields_from_a_compatible_sender_are_ignored() -> None:
    raw = msgspec.msgpack.decode(wire.encode(DELTA))
    raw["future_field"] = "x"
    assert wire.decode_events(msgspec.msgpack.encode([raw])) == [DELTA]


def test_messages_are_frozen() -> None:
    with pytest.raises(AttributeError):
        CHAT.text = "changed"  # type: ignore[misc]
