"""Shapes of Redis stream replies, read one way whatever the protocol version.

redis-py returns XREAD/XREADGROUP as ``[[stream, entries]]`` (RESP2), ``{stream: [entries]}``
(RESP3) or ``{stream: entries}`` (its unified mode); the queue reads all three.
"""

from __future__ import annotations

from typing import Any

Entry = tuple[bytes, dict[bytes, bytes] | None]
"""A stream entry: its id and fields (``None`` for an entry deleted while pending)."""


def stream_entries(response: Any) -> list[tuple[bytes, list[Entry]]]:
    """``(stream name, entries)`` pairs of an XREAD/XREADGROUP reply."""
    if not response:
        return []
    if isinstance(response, dict):
        return [(name, _unwrap(entries)) for name, entries in response.items()]
    return [(name, entries) for name, entries in response]


def _unwrap(entries: Any) -> list[Entry]:
    # RESP3 nests the entry list once more: [[(id, fields), ...]].
    if len(entries) == 1 and isinstance(entries[0], list):
        return list(entries[0])
    return list(entries)


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
