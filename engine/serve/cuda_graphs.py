"""The decode step captured as CUDA graphs, one per bucket of batch sizes, and replayed.

Capturing records a step's kernels once; replaying them costs one launch instead of hundreds,
which is most of a small model's decode time on a GPU. A captured graph reads and writes the
same memory every time, so its inputs live in static buffers (:class:`CudaGraphs` owns the
positions; the batch shares its tokens and slots).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from engine.models import LanguageModel, Slots

log = logging.getLogger(__name__)


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
        decoder: LanguageModel,
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
