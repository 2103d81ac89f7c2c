"""Slot batches: preallocated model state, static-shape steps, and CUDA graphs on a GPU.

A :class:`SlotBatch` holds conversations in rows 0..n-1 of state buffers sized before the
first request (GPT: a KV cache of ``rows x block_size`` slots; GRU: an (L, rows, H) hidden
buffer). A conversation joins by copying its state into row n, and leaves by moving the last
row into its place, so joins and leaves cost O(that row), never O(batch). Two kinds::

    PrefillBatch  up to 16 conversations feeding prompt chunks (ragged, one pass per step)
    DecodeBatch   up to max_batch conversations, one token each per step:
                  make_room (GPT: slide full windows) -> decode_step -> advance

``decode_step`` is a model method with static shapes that never reads back to the host. On
CPU it runs as is (the GPT's attention trimmed to the slots in use); on CUDA with
``cuda_graphs`` it is captured once per batch-size bucket (1, 2, 4, ... max_batch) and
replayed, rows between n and the bucket computing junk in free rows that no one reads.

Both batches run the same serving weights (:func:`serving_copy`): the model itself, or a copy
in another dtype — bf16 halves the bytes a step reads and, on CPUs with native bf16 dot
products, quadruples the matmul rate. States leaving for the context cache are converted
back, so the cache always holds states in the model's own dtype.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

import torch
from torch import Tensor

from engine.models import LanguageModel, SeqState

log = logging.getLogger(__name__)

WINDOW_STEP = 64
"""On CPU, a GPT step attends over the slots in use rounded up to this (fewer shapes)."""


class Slots(Protocol):
    lengths: list[int]
    consumed: list[int]

    def advance(self, n: int) -> None: ...


class SlotModel(Protocol):
    """What a model provides for slot-based serving (both GRUModel and GPT do)."""

    def new_slots(self, max_batch: int) -> Any: ...
    def load_row(self, slots: Any, row: int, state: Any) -> None: ...
    def save_row(self, slots: Any, row: int) -> Any: ...
    def move_row(self, slots: Any, src: int, dst: int) -> None: ...
    def make_room(self, slots: Any, n: int) -> None: ...
    def decode_step(
        self, slots: Any, tokens: Tensor, positions: Tensor, window: int | None = None
    ) -> Tensor: ...
    def prefill_rows(self, slots: Any, tokens: Tensor, lengths: list[int]) -> Tensor: ...


def serving_copy(model: LanguageModel, dtype: torch.dtype | None) -> SlotModel:
    """The weights prefill and decode run with: ``model`` itself, or a copy in ``dtype``.

    ``None`` keeps the model's dtype (the service loads bf16 weights on a GPU already); bf16
    on CPU is a choice, faster where native but not bit-equal to fp32, never a default.
    """
    decoder = model if dtype in (None, model.dtype) else copy.deepcopy(model).to(dtype)
    return cast(SlotModel, decoder.eval())


def fastest_decode_dtype(
    model: LanguageModel, rows: int, candidates: Sequence[torch.dtype], steps: int = 8
) -> torch.dtype:
    """The candidate whose decode step over ``rows`` rows runs fastest on this machine
    (each candidate's best of ``steps`` timed steps, after a warm-up)."""
    best: dict[torch.dtype, float] = {}
    with torch.inference_mode():
        for dtype in candidates:
            batch = DecodeBatch(model, serving_copy(model, dtype), rows)
            for _ in range(rows):
                batch.join(None, 0)
            times = []
            for _ in range(steps + 2):
                started = time.perf_counter()
                batch.step()
                times.append(time.perf_counter() - started)
            best[dtype] = min(times[2:])
    chosen = min(best, key=lambda d: best[d])
    log.info(
        "decode step over %d rows: %s; serving in %s",
        rows,
        ", ".join(f"{str(d).removeprefix('torch.')} {t * 1000:.2f} ms" for d, t in best.items()),
        str(chosen).removeprefix("torch."),
    )
    return chosen


class SlotBatch:
    """Rows 0..n-1 of a slots object: conversations join at row n and leave by compaction."""

    def __init__(self, model: LanguageModel, decoder: SlotModel, rows: int) -> None:
        self.model = model
        self.decoder = decoder
        self.max_rows = rows
        self.device = model.device
        self.slots: Slots = decoder.new_slots(rows)
        self.n = 0

    def _add(self, state: Any) -> int:
        if self.n >= self.max_rows:
            raise RuntimeError(f"slot batch is full ({self.max_rows} rows)")
        row = self.n
        self.decoder.load_row(self.slots, row, state)
        self.n += 1
        return row

    def leave(self, row: int) -> int | None:
        """Free ``row``; the last row moves into it. Returns where that row came from, if any."""
        last = self.n - 1
        self.n = last
        if row == last:
            return None
        self.decoder.move_row(self.slots, last, row)
        return last

    def clear(self) -> None:
        self.n = 0

    def raw_state(self, row: int) -> Any:
        """A copy of ``row``'s state as the serving weights hold it (to move it elsewhere)."""
        return self.decoder.save_row(self.slots, row)

    def state(self, row: int) -> SeqState:
        """A copy of ``row``'s state in the model's own dtype (for the context cache)."""
        saved = self.raw_state(row)
        # A no-op conversion when the dtypes agree (``Tensor.to`` returns the tensor itself).
        return cast(SeqState, self.model.state_from_tensors(saved.to_tensors()))


class PrefillBatch(SlotBatch):
    """Conversations feeding their prompts, a chunk per row per pass."""

    def join(self, state: SeqState | None) -> int:
        """Add a conversation continuing ``state`` (``None``: fresh); its row."""
        return self._add(state)

    def feed(self, chunks: Sequence[Sequence[int]]) -> Tensor:
        """Row r (of rows 0..n-1) consumes ``chunks[r]`` -> logits (n, V) after its last token."""
        assert len(chunks) == self.n and all(chunks)
        width = max(len(c) for c in chunks)
        rows = [list(c) + [0] * (width - len(c)) for c in chunks]  # right-padded
        tokens = torch.tensor(rows, dtype=torch.long, device=self.device)  # (n, T)
        return self.decoder.prefill_rows(self.slots, tokens, [len(c) for c in chunks])


class DecodeBatch(SlotBatch):
    """Conversations generating: every row gets one token per :meth:`step`."""

    def __init__(
        self, model: LanguageModel, decoder: SlotModel, rows: int, *, cuda_graphs: bool = False
    ) -> None:
        super().__init__(model, decoder, rows)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        """Each row's next token to feed; the scheduler writes the sampled ids into it."""
        self._graphs: CudaGraphs | None = None
        if cuda_graphs and self.device.type == "cuda":
            self._graphs = CudaGraphs(decoder, self.slots, self.tokens, rows)

    def join(self, state: Any, token: int) -> int:
        """Add a conversation continuing ``state`` (a :meth:`raw_state` or a cached state)
        that feeds ``token`` next; its row."""
        row = self._add(state)
        self.tokens[row] = token
        return row

    def leave(self, row: int) -> int | None:
        moved_from = super().leave(row)
        if moved_from is not None:
            self.tokens[row] = self.tokens[moved_from]
        return moved_from

    def step(self) -> Tensor:
        """Feed every row its next token: -> logits (n, V) float32."""
        n = self.n
        self.decoder.make_room(self.slots, n)
        lengths = self.slots.lengths[:n]
        positions = torch.tensor(lengths, dtype=torch.long, device=self.device)  # (n,)
        if self._graphs is not None:
            logits = self._graphs.replay(n, positions)
        else:
            window = -(-(max(lengths) + 1) // WINDOW_STEP) * WINDOW_STEP  # > every position
            logits = self.decoder.decode_step(self.slots, self.tokens[:n], positions, window)
        self.slots.advance(n)
        return logits


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while capturing: a collection that frees another graph (an old
    model's, after a hot swap) mid-capture resets it, which invalidates the capture."""
    gc.collect()  # collect now, before any capture begins
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def graph_buckets(max_batch: int) -> list[int]:
    """Batch sizes to capture: powers of two below ``max_batch``, and ``max_batch``."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if (1 << i) < max_batch]
    return [*sizes, max_batch]


class CudaGraphs:
    """The decode step captured once per bucket of batch sizes, replayed with new inputs.

    Inputs live in static buffers: ``tokens`` (shared with the batch) and ``positions``;
    the slots are static already. Every bucket is captured up front, while no row is in use,
    because capturing runs the step (it writes junk into the rows it covers).
    """

    def __init__(
        self,
        decoder: SlotModel,
        slots: Slots,
        tokens: Tensor,
        max_batch: int,
        buckets: Sequence[int] | None = None,
    ) -> None:
        self._decoder = decoder
        self._slots = slots
        self._tokens = tokens
        self._positions = torch.zeros(max_batch, dtype=torch.long, device=tokens.device)
        self._buckets = sorted(buckets or graph_buckets(max_batch))
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode(), _collector_paused():
            for size in reversed(self._buckets):  # largest first, so smaller ones reuse its pool
                self._graphs[size] = self._capture(size, pool)
        log.info("captured the decode step for batch sizes %s", self._buckets)

    def _run(self, size: int) -> Tensor:
        return self._decoder.decode_step(
            self._slots, self._tokens[:size], self._positions[:size], None
        )

    def _capture(self, size: int, pool: Any) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (kernel selection, allocator) off the graph
            for _ in range(2):
                self._run(size)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = self._run(size)
        return graph, out

    def replay(self, n: int, positions: Tensor) -> Tensor:
        """Logits (n, V) for rows 0..n-1 (``tokens[:n]`` already holds their inputs)."""
        size = next(b for b in self._buckets if b >= n)
        self._positions[:n].copy_(positions)
        graph, out = self._graphs[size]
        graph.replay()
        return out[:n]
