"""Per-conversation context cache: model state in memory under a byte budget (LRU).

An entry holds the state after the model consumed ``text`` (the formatted conversation so
far) under one model version. The cache is only a cache: a lookup that does not match the
conversation's actual text, or comes from another model version, is a miss, and the caller
recomputes from the stored history. Evicted entries are serialised (safetensors, never
pickle) for the worker to spill to Redis with a TTL; a spilled entry carries its model
version and text, so restoring it is checked the same way.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from engine.models import SeqState

log = logging.getLogger(__name__)

_META_KEY = "parley"


@dataclass
class CacheEntry:
    version: str
    text: str
    """Everything the state has consumed, as formatted text (specials included)."""
    state: SeqState

    @property
    def nbytes(self) -> int:
        return self.state.nbytes + len(self.text) * 4


@dataclass(frozen=True)
class Match:
    """A usable cached state and the text still to feed after it."""

    state: SeqState
    remainder: str


class ContextCache:
    """LRU of :class:`CacheEntry` by conversation key, bounded by ``budget_bytes``."""

    def __init__(self, budget_bytes: int, on_evict: Callable[[str, CacheEntry], None]) -> None:
        self.budget_bytes = budget_bytes
        self._on_evict = on_evict
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.queries = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def pop(self, conversation: str) -> CacheEntry | None:
        """Take an entry out (it is in use by a running sequence until put back)."""
        entry = self._entries.pop(conversation, None)
        if entry is not None:
            self._bytes -= entry.nbytes
        return entry

    def put(self, conversation: str, entry: CacheEntry) -> None:
        old = self.pop(conversation)
        del old
        self._entries[conversation] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.budget_bytes and self._entries:
            key, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self._on_evict(key, evicted)

    def drop_where(self, predicate: Callable[[str], bool]) -> None:
        """Drop (without spilling) every entry whose conversation key matches."""
        for key in [k for k in self._entries if predicate(k)]:
            self.pop(key)

    def clear(self) -> None:
        """Drop everything (a model swap makes every state meaningless)."""
        self._entries.clear()
        self._bytes = 0

    def match(
        self, entry: CacheEntry | None, version: str, prompt: str, history_text: str | None
    ) -> Match | None:
        """Whether ``entry`` can continue into ``prompt``, and what is left to feed.

        A hit needs the same model version and either the entry's text being a prefix of
        the prompt, or (``history_text`` given: stored history, which is trimmed at the
        front over time) the entry having consumed all of that history already.
        """
        self.queries += 1
        if entry is None or entry.version != version:
            return None
        if prompt.startswith(entry.text):
            self.hits += 1
            return Match(entry.state, prompt[len(entry.text) :])
        if history_text and entry.text.endswith(history_text):
            self.hits += 1
            return Match(entry.state, prompt[len(history_text) :])
        return None


def serialize_entry(entry: CacheEntry) -> bytes:
    """An entry as bytes for Redis: state tensors + version and text as metadata."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in entry.state.to_tensors().items()}
    meta = {_META_KEY: json.dumps({"version": entry.version, "text": entry.text})}
    return st_save(tensors, metadata=meta)


def deserialize_entry(
    data: bytes, state_from_tensors: Callable[[dict[str, torch.Tensor]], SeqState]
) -> CacheEntry | None:
    """The entry spilled as ``data``, or ``None`` if it cannot be read (it is only a cache)."""
    try:
        tensors = st_load(data)
        meta = _read_metadata(data)
        return CacheEntry(meta["version"], meta["text"], state_from_tensors(tensors))
    except Exception:
        log.warning("ignoring an unreadable spilled state", exc_info=True)
        return None


def _read_metadata(data: bytes) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header length, then the JSON header.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta: dict[str, str] = json.loads(header["__metadata__"][_META_KEY])
    return meta
