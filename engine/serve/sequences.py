"""What the scheduler keeps per model and per request being answered.

A :class:`ServedModel` is a loaded model with its prefill and decode batches; a
:class:`Running` is one request's sequence in them (a ``hybrid`` request has ``n``, grouped by
a :class:`SampleGroup`). The scheduler (:mod:`engine.serve.scheduler`) moves them between
batches; these types and the helpers below hold no policy of their own.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from bot.wire import FinishReason
from engine.checkpoint import Checkpoint
from engine.serve.batches import DecodeBatch, PrefillBatch, SlotBatch
from engine.serve.cache import CacheEntry
from engine.serve.sampling import RowSampler, SamplingParams, make_generator
from engine.serve.work import Work


@dataclass(eq=False)
class ServedModel:
    """A loaded model with its own decode batch (two exist only during a hot swap)."""

    checkpoint: Checkpoint
    prefill: PrefillBatch
    decode: DecodeBatch
    sampler: RowSampler
    """The decode rows' sampling state, row for row."""
    banned: list[int]
    """Tokens never sampled: specials other than end-of-turn (a reply that contained one
    would decode to less than its state consumed, so its cache entry would lie)."""
    prefilling: list[Running] = field(default_factory=list)
    """``prefilling[i]`` feeds its prompt in row i of ``prefill``."""
    rows: list[Running] = field(default_factory=list)
    """``rows[i]`` decodes in row i of ``decode``."""

    @property
    def version(self) -> str:
        return self.checkpoint.version


@dataclass(eq=False)
class Running:
    """One request being answered."""

    work: Work
    model: ServedModel
    params: SamplingParams
    prompt_text: str
    pending: list[int]
    """Prompt tokens still to prefill."""
    prompt_tokens: int
    cached_tokens: int
    eot_id: int
    started_s: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None
    generated: list[int] = field(default_factory=list)
    final_tokens: int = 0
    """Generated tokens whose text is final and streamed: they end on a character boundary."""
    tail_chars: int = 0
    """Characters streamed from the tokens after ``final_tokens``."""
    last_emit_s: float = 0.0
    finish_reason: FinishReason | None = None
    row: int = -1
    """Its row in its model's prefill batch, then in its decode batch."""
    group: SampleGroup | None = None
    """In ``hybrid`` mode: the request's other samples (nothing streams; one is chosen)."""

    @property
    def conversation(self) -> str:
        return self.work.request.conversation


@dataclass(eq=False)
class SampleGroup:
    """The ``n`` samples of one ``hybrid`` request, and what the choice also weighs."""

    work: Work
    size: int
    prompt_text: str
    remembered: list[str]
    entry: CacheEntry | None
    """The conversation's cache entry before this request (kept if a remembered line wins)."""
    done: list[tuple[Running, str, CacheEntry | None]] = field(default_factory=list)
    """Each finished sample: its sequence, its reply and the cache entry it would leave."""


def remove_row(batch: SlotBatch, seqs: list[Running], seq: Running) -> int | None:
    """Take ``seq`` out of ``batch`` (``seqs[i]`` sits in row i); the last row moves into
    its place. Returns the row the mover came from, if one moved."""
    row = seq.row
    moved_from = batch.leave(row)
    if moved_from is not None:
        mover = seqs[moved_from]
        mover.row = row
        seqs[row] = mover
    seqs.pop()
    seq.row = -1
    return moved_from


def works_of(seqs: list[Running]) -> list[Work]:
    """The requests ``seqs`` answer, in order, each once (a ``hybrid`` one has several)."""
    seen: set[int] = set()
    works = []
    for seq in seqs:
        if id(seq.work) not in seen:
            seen.add(id(seq.work))
            works.append(seq.work)
    return works


def nth_sample(params: SamplingParams, work: Work, i: int) -> SamplingParams:
    """The ``i``-th sample's parameters: a seeded request's samples each get their own seed."""
    seed = work.request.sampling.seed
    if i == 0 or seed is None:
        return params  # unseeded rows already draw apart (one draw for the whole batch)
    return dataclasses.replace(params, generator=make_generator(seed + i))


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
