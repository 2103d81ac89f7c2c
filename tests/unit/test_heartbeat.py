"""The engine heartbeat as a wire struct: encoded once, decoded by every reader alike."""

from __future__ import annotations

import json

import pytest

from bot import wire
from bot.errors import WireError
from bot.wire import HEARTBEAT_FRESH_S, WIRE_VERSION, Heartbeat


def test_heartbeat_round_trips_and_stays_readable_json() -> None:
    beat = Heartbeat(worker="w1", time=100.0, model_version="v2", running=3, cache_bytes=4096)
    data = wire.encode_heartbeat(beat)
    assert json.loads(data)["worker"] == "w1"
    assert wire.decode_heartbeat(data) == beat


def test_a_heartbeat_from_an_older_writer_decodes_with_defaults() -> None:
    beat = wire.decode_heartbeat(json.dumps({"worker": "w", "time": 1.0, "extra": 5}))
    assert beat == Heartbeat(worker="w", time=1.0)


@pytest.mark.parametrize(
    "data",
    [b"not json", b'{"time": 1.0}', json.dumps({"worker": "w", "time": 1, "v": WIRE_VERSION + 1})],
)
def test_malformed_or_newer_heartbeats_are_wire_errors(data: bytes | str) -> None:
    with pytest.raises(WireError):
        wire.decode_heartbeat(data)


def test_a_heartbeat_is_alive_while_fresh() -> None:
    beat = Heartbeat(worker="w", time=1000.0)
    assert beat.alive(1000.0 + HEARTBEAT_FRESH_S - 0.1)
    assert not beat.alive(1000.0 + HEARTBEAT_FRESH_S)
    assert beat.age_s(900.0) == 0.0
