"""Slot batches: preallocated model state and static-shape steps (CUDA graphs on a GPU).

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

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from engine.models import LanguageModel, SeqState
from engine.serve.cuda_graphs import CudaGraphs

log = logging.getLogger(__name__)

WINDOW_STEP = 64
"""On CPU, a GPT step attends over the slots in use rounded up to this (fewer shapes)."""


def serving_copy(model: LanguageModel, dtype: torch.dtype | None) -> LanguageModel:
    """The weights prefill and decode run with: ``model`` itself, or a copy in ``dtype``.

    ``None`` keeps the model's dtype (the service loads bf16 weights on a GPU already); bf16
    on CPU is a choice, faster where native but not bit-equal to fp32, never a default.
    """
    decoder = model if dtype in (None, model.dtype) else copy.deepcopy(model).to(dtype)
    return decoder.eval()


def time_decode_steps(
    model: LanguageModel, rows: int, candidates: Sequence[torch.dtype], steps: int = 8
) -> dict[torch.dtype, float]:
    """Seconds of a decode step over ``rows`` rows serving from each candidate dtype (each
    candidate's best of ``steps`` timed steps, after two warm-up steps). ``model`` is left as
    it was: each candidate runs from its own :func:`serving_copy`."""
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
    return best


def fastest(times: dict[torch.dtype, float]) -> torch.dtype:
    """The dtype with the shortest step (the first listed, on a tie); logged with the times."""
    chosen = min(times, key=lambda d: times[d])
    log.info(
        "decode step: %s; serving in %s",
        ", ".join(f"{str(d).removeprefix('torch.')} {t * 1000:.2f} ms" for d, t in times.items()),
        str(chosen).removeprefix("torch."),
    )
    return chosen


class SlotBatch:
    """Rows 0..n-1 of a slots object: conversations join at row n and leave by compaction."""

    def __init__(self, model: LanguageModel, decoder: LanguageModel, rows: int) -> None:
        self.model = model
        self.decoder = decoder
        self.max_rows = rows
        self.device = model.device
        self.slots = decoder.new_slots(rows)
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
        return self.model.state_from_tensors(saved.to_tensors())


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
        self, model: LanguageModel, decoder: LanguageModel, rows: int, *, cuda_graphs: bool = False
    ) -> None:
        super().__init__(model, decoder, rows)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        """Each row's next token to feed; the scheduler writes the sampled ids into it."""
        self._graphs: CudaGraphs | None = None  # the decode step, captured (GPU only)
        if cuda_graphs and self.device.type == "cuda":
            self._graphs = CudaGraphs(decoder, self.slots, self.tokens, rows)

    @property
    def graphed(self) -> bool:
        """Whether the decode step replays captured CUDA graphs."""
        return self._graphs is not None

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
