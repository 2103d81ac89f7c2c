"""Continuous batching: every active conversation advances in one batched model step.

The scheduler runs in the torch thread. Each loop iteration::

    take new work -> apply a pending model swap -> admit waiting sequences
      -> prefill one chunk of prompt tokens -> one decode step for every decoding row
      -> emit outputs (progress at the stream interval, finished, spills)

A prompt is prefilled in chunks of ``prefill_chunk_tokens`` so a long one cannot stall the
decoding rows. The batch state is rebuilt (split + merge) only when its members change.
A hot swap loads the new model into a fresh :class:`_Slot`; sequences already running
finish on the model they started with, new ones start on the new one, and the old slot is
dropped when it empties — no request is lost and no reply switches model halfway.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bot.settings import EngineSettings, SamplingSettings
from bot.wire import Done, Error, FinishReason
from engine.cache import CacheEntry, ContextCache, deserialize_entry, serialize_entry
from engine.checkpoint import Checkpoint
from engine.data.formatting import clean_text
from engine.models import SeqState, State
from engine.prompt import build_prompt
from engine.sampler import SamplingParams, sample_next
from engine.work import Applied, Control, Failed, Finished, Output, Progress, Spill, Stats, Work

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05


@dataclass(eq=False)
class _Sequence:
    """One request being answered."""

    work: Work
    slot: _Slot
    params: SamplingParams
    prompt_text: str
    pending: list[int]
    state: SeqState | None
    prompt_tokens: int
    started_s: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None
    emitted_chars: int = 0
    last_emit_s: float = 0.0
    finish_reason: FinishReason | None = None

    @property
    def conversation(self) -> str:
        return self.work.request.conversation


@dataclass(eq=False)
class _Slot:
    """A loaded model with its own decode batch (two exist only during a hot swap)."""

    checkpoint: Checkpoint
    decoding: list[_Sequence] = field(default_factory=list)
    batch: list[_Sequence] = field(default_factory=list)
    batch_state: State | None = None

    @property
    def version(self) -> str:
        return self.checkpoint.version


class Scheduler:
    """Turns :class:`Work` into outputs, batching every running sequence into one step."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        engine: EngineSettings,
        sampling: SamplingSettings,
        device: torch.device,
    ) -> None:
        self._engine = engine
        self._sampling = sampling
        self._device = device
        self._inbox: queue.SimpleQueue[Work | Control] = queue.SimpleQueue()
        self._swap_lock = threading.Lock()
        self._pending_swap: Checkpoint | None = None
        self._slot = _Slot(checkpoint)
        self._old_slots: list[_Slot] = []
        self._waiting: deque[Work] = deque()
        self._prefilling: deque[_Sequence] = deque()
        self._outputs: list[Output] = []
        self._cache = ContextCache(engine.cache_bytes, self._spill)
        self.stats = Stats(model_version=checkpoint.version)

    # -- called from the event loop (thread-safe) ----------------------------------------

    def submit(self, item: Work | Control) -> None:
        self._inbox.put(item)

    def swap(self, checkpoint: Checkpoint) -> None:
        """Serve ``checkpoint`` from the next step on."""
        with self._swap_lock:
            self._pending_swap = checkpoint

    # -- the torch thread ----------------------------------------------------------------

    def run(self, emit: Callable[[list[Output]], None], stop: threading.Event) -> None:
        with torch.inference_mode():
            while not stop.is_set():
                try:
                    self.step_once()
                except Exception:  # one bad step must not kill the engine
                    log.exception("model step failed; failing the running requests")
                    self._fail_all("internal", "Something went wrong generating this reply.")
                if self._outputs:
                    emit(self._outputs)
                    self._outputs = []

    def step_once(self) -> None:
        """One scheduling iteration (public for tests that drive the scheduler directly)."""
        self._take_inbox(block=not self._busy)
        self._apply_swap()
        self._admit()
        self._prefill_chunk()
        for slot in (*self._old_slots, self._slot):
            self._decode_step(slot)
        self._old_slots = [s for s in self._old_slots if s.decoding]
        self._update_stats()

    @property
    def _busy(self) -> bool:
        return bool(self._waiting or self._prefilling or self._running)

    @property
    def _running(self) -> int:
        return sum(len(s.decoding) for s in (*self._old_slots, self._slot)) + len(self._prefilling)

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, Control):
                self._apply_control(item)
            else:
                self._waiting.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _apply_control(self, control: Control) -> None:
        req = control.request
        self._cache.pop(req.conversation)
        if req.command == "forget" and req.user:
            # Conversation keys end in the user id (platform:chat:user).
            self._cache.drop_where(lambda conv: conv.endswith(f":{req.user}"))
        # A spilled copy in Redis is deleted by the worker along with the history.
        self._outputs.append(Applied(control, _CONTROL_MESSAGES[control.request.command]))

    def _apply_swap(self) -> None:
        with self._swap_lock:
            checkpoint, self._pending_swap = self._pending_swap, None
        if checkpoint is None:
            return
        if self._slot.decoding or self._prefilling:
            self._old_slots.append(self._slot)
        # Sequences still prefilling restart on the new model: nothing was generated yet.
        restarted = [s.work for s in self._prefilling]
        self._prefilling.clear()
        self._waiting.extendleft(reversed(restarted))
        self._slot = _Slot(checkpoint)
        self._cache.clear()  # state from the old model means nothing to the new one
        log.info("swapped to model %s", checkpoint.version)

    # -- admission and prefill -----------------------------------------------------------

    def _admit(self) -> None:
        while self._waiting and self._running < self._engine.max_batch:
            work = self._waiting.popleft()
            try:
                self._prefilling.append(self._start(work))
            except ValueError as e:  # the message itself is unusable (e.g. empty once cleaned)
                self._fail(work, "bad_request", f"Can't answer that: {e}.")
            except Exception:
                log.exception("could not start request %s", work.request.id)
                self._fail(work, "internal", "Something went wrong reading this message.")

    def _start(self, work: Work) -> _Sequence:
        slot = self._slot
        ckpt = slot.checkpoint
        params = SamplingParams.from_request(work.request.sampling, self._sampling)
        prompt = build_prompt(work.history, work.request.text, self._engine.history_max_chars)
        entry = self._cache.pop(work.request.conversation)
        if entry is None and work.spilled_state is not None:
            entry = deserialize_entry(work.spilled_state, ckpt.model.state_from_tensors)
        stored = work.request.history is None  # stored history is trimmed at the front
        match = self._cache.match(entry, slot.version, prompt.full, prompt.history if stored else None)
        if match is not None:
            text, state, feed_text = prompt.full, match.state, match.remainder
        else:
            text, state, feed_text = prompt.truncated, None, prompt.truncated
        pending = ckpt.tokenizer.encode(feed_text)
        pending = self._fit_context(pending, state, params.max_new_tokens, slot)
        return _Sequence(
            work=work, slot=slot, params=params, prompt_text=text, pending=pending,
            state=state, prompt_tokens=len(pending),
        )

    @staticmethod
    def _fit_context(
        pending: list[int], state: SeqState | None, max_new: int, slot: _Slot
    ) -> list[int]:
        """Keep a fresh prompt within a bounded model's window (the newest tokens win)."""
        limit = slot.checkpoint.model.max_context
        if limit is None or state is not None:
            return pending  # unbounded, or the model's own sliding window handles it
        keep = max(1, limit - min(max_new, limit // 2))
        return pending[-keep:]

    def _prefill_chunk(self) -> None:
        """Feed up to one chunk of prompt tokens of the oldest prefilling sequence."""
        if not self._prefilling:
            return
        seq = self._prefilling[0]
        model = seq.slot.checkpoint.model
        chunk, seq.pending = (
            seq.pending[: self._engine.prefill_chunk_tokens],
            seq.pending[self._engine.prefill_chunk_tokens :],
        )
        tokens = torch.tensor([chunk], dtype=torch.long, device=self._device)  # (1, T)
        logits, state = model(tokens, model.merge_states([seq.state]), last_only=True)
        seq.state = model.split_state(state)[0]
        if seq.pending:
            return
        self._prefilling.popleft()
        token = self._sample([seq], logits[:, -1])[0]
        self._accept(seq, token)
        if seq.finish_reason is None:
            seq.slot.decoding.append(seq)
        else:
            self._finish(seq)

    # -- decoding ------------------------------------------------------------------------

    def _decode_step(self, slot: _Slot) -> None:
        if not slot.decoding:
            return
        model = slot.checkpoint.model
        self._rebatch(slot)
        tokens = torch.tensor(
            [[s.next_token] for s in slot.batch], dtype=torch.long, device=self._device
        )  # (B, 1)
        logits, slot.batch_state = model(tokens, slot.batch_state, last_only=True)
        next_tokens = self._sample(slot.batch, logits[:, -1])
        finished = []
        for seq, token in zip(slot.batch, next_tokens, strict=True):
            self._accept(seq, token)
            if seq.finish_reason is not None:
                finished.append(seq)
        if finished:
            states = model.split_state(slot.batch_state)
            for i, seq in enumerate(slot.batch):
                seq.state = states[i]
            slot.decoding = [s for s in slot.decoding if s.finish_reason is None]
            slot.batch, slot.batch_state = [], None
            for seq in finished:
                self._finish(seq)

    def _rebatch(self, slot: _Slot) -> None:
        """(Re)build the batch state when members joined or left since the last step."""
        if slot.batch == slot.decoding and slot.batch_state is not None:
            return
        model = slot.checkpoint.model
        if slot.batch_state is not None:
            for seq, st in zip(slot.batch, model.split_state(slot.batch_state), strict=True):
                seq.state = st
        slot.batch = list(slot.decoding)
        slot.batch_state = model.merge_states([s.state for s in slot.batch])

    def _sample(self, seqs: list[_Sequence], logits: torch.Tensor) -> list[int]:
        """Next token per row of ``logits`` (B, V) under each sequence's own options."""
        return sample_next(logits, [s.params for s in seqs], [s.generated for s in seqs])

    def _accept(self, seq: _Sequence, token: int) -> None:
        """Record a sampled token, decide whether the sequence is done, stream progress."""
        now = time.monotonic()
        if seq.first_token_s is None:
            seq.first_token_s = now
        tokenizer = seq.slot.checkpoint.tokenizer
        self.stats.tokens_generated += 1
        if token == tokenizer.eot_id:
            seq.finish_reason = "stop"
            return
        seq.generated.append(token)
        seq.next_token = token
        text = tokenizer.decode(seq.generated)
        if any(stop in text for stop in seq.params.stop):
            seq.finish_reason = "stop"
        elif len(seq.generated) >= seq.params.max_new_tokens:
            seq.finish_reason = "length"
        elif now - seq.last_emit_s >= self._engine.stream_interval_ms / 1000:
            self._progress(seq, text, now)

    def _progress(self, seq: _Sequence, text: str, now: float) -> None:
        stable = text.rstrip("\ufffd")  # a multi-byte character may still be incomplete
        if len(stable) > seq.emitted_chars:
            self._outputs.append(Progress(seq.work, stable[seq.emitted_chars :]))
            seq.emitted_chars = len(stable)
            seq.last_emit_s = now

    def _finish(self, seq: _Sequence) -> None:
        ckpt = seq.slot.checkpoint
        raw = ckpt.tokenizer.decode(seq.generated)
        # Tidy like every stored turn, so the next prompt reproduces it (and hits the cache).
        reply = clean_text(_cut_at_stop(raw, seq.params.stop))
        if seq.state is not None and seq.slot is self._slot:
            # The state has consumed every generated token but the last one sampled (after
            # <|eot|> nothing more is fed; after a length or stop cut, the last one is not).
            consumed = raw if seq.finish_reason == "stop" and not seq.params.stop else (
                ckpt.tokenizer.decode(seq.generated[:-1])
            )
            entry = CacheEntry(ckpt.version, seq.prompt_text + consumed, seq.state)
            self._cache.put(seq.conversation, entry)
        now = time.monotonic()
        work = seq.work
        queue_ms = max(0.0, (seq.started_s - work.received_s) * 1000) if work.received_s else 0.0
        done = Done(
            request_id=work.request.id,
            seq=0,
            text=reply,
            finish_reason=seq.finish_reason or "stop",
            prompt_tokens=seq.prompt_tokens,
            completion_tokens=len(seq.generated),
            queue_ms=queue_ms,
            ttft_ms=((seq.first_token_s or now) - seq.started_s) * 1000,
            total_ms=(now - seq.started_s) * 1000,
            model_version=ckpt.version,
        )
        self._outputs.append(Finished(work, done))

    # -- failures, spills, stats ---------------------------------------------------------

    def _fail(self, work: Work, code: str, message: str) -> None:
        error = Error(request_id=work.request.id, seq=0, code=code, message=message)  # type: ignore[arg-type]
        self._outputs.append(Failed(work, error))

    def _fail_all(self, code: str, message: str) -> None:
        for slot in (*self._old_slots, self._slot):
            for seq in slot.decoding:
                self._fail(seq.work, code, message)
            slot.decoding, slot.batch, slot.batch_state = [], [], None
        for seq in self._prefilling:
            self._fail(seq.work, code, message)
        self._prefilling.clear()
        self._old_slots = []

    def _spill(self, conversation: str, entry: CacheEntry) -> None:
        self._outputs.append(Spill(conversation, serialize_entry(entry)))

    def _update_stats(self) -> None:
        self.stats.running = self._running
        self.stats.waiting = len(self._waiting)
        self.stats.cache_hits = self._cache.hits
        self.stats.cache_queries = self._cache.queries
        self.stats.model_version = self._slot.version
        self.stats.extra["cache_bytes"] = float(self._cache.nbytes)


_CONTROL_MESSAGES = {
    "reset": "Conversation reset: I've forgotten what we talked about.",
    "forget": "Done: everything stored about you has been deleted.",
}


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
