"""Continuous batching: every active conversation advances in one batched model step.

The scheduler runs in the torch thread. Each loop iteration::

    take new work -> apply a pending model swap -> admit waiting requests (FIFO)
      -> one prefill pass (a chunk of every prefilling prompt) -> one decode step for every
      decoding row -> emit outputs (progress at the stream interval, finished, spills)

Model state lives in slot batches sized before the first request (:mod:`engine.serve.batches`). An
admitted request copies its cached state (if any) into a row of its model's
:class:`PrefillBatch`; each pass feeds every prefilling row a chunk of its prompt, the chunks
together about ``prefill_chunk_tokens`` long so a long prompt cannot stall the decoding rows.
A finished prompt moves its row into the :class:`DecodeBatch`, and a finished reply leaves it
(the last row moves into its place): joins and leaves cost O(that row), never O(batch), and a
step costs nothing per row in Python beyond reading its sampled token.

A hot swap loads the new model into a fresh :class:`ServedModel` with its own batch; sequences
already decoding finish on the model they started with, new ones start on the new one, and
the old model is dropped when it empties — no request is lost and no reply switches model
halfway.

The reply mode (:mod:`engine.serve.replies`) acts at two points: admitting a request in
``retrieve`` mode, a remembered line that matches is chosen and sent at once (no rows taken);
in ``hybrid`` mode a request takes ``n`` rows, streams nothing, and is answered when its
last sample finishes, with the best of the samples and the remembered lines.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from bot.settings import EngineSettings, ReplySettings, SamplingSettings
from engine.checkpoint import Checkpoint
from engine.data.formatting import clean_text
from engine.models import SeqState
from engine.serve.batches import DecodeBatch, PrefillBatch, serving_copy
from engine.serve.cache import CacheEntry, ContextCache, deserialize_entry, serialize_entry
from engine.serve.metrics import EngineMetrics
from engine.serve.prompt import build_prompt
from engine.serve.replies import ReplyPicker
from engine.serve.sampling import RowSampler, SamplingParams, sample_next
from engine.serve.sequences import (
    Running,
    SampleGroup,
    ServedModel,
    cut_at_stop,
    nth_sample,
    remove_row,
    works_of,
)
from engine.serve.work import (
    Applied,
    Control,
    Failed,
    Failure,
    Finished,
    Output,
    Progress,
    Reply,
    Spill,
    Stats,
    Work,
)

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05
MIN_PREFILL_CHUNK = 16
"""The smallest chunk a prefill pass feeds a row, so a pass holds up to prefill_chunk_tokens / 16
rows (a GRU's, whose cost is per timestep whatever the rows, up to max_batch)."""
STOP_TAIL_TOKENS_PER_CHAR = 4
"""A stop string of m characters lies within the last 4m tokens (a token is >= 1 byte)."""


class Scheduler:
    """Turns :class:`Work` into outputs, batching every running sequence into one step.

    ``decode_dtype`` serves from a copy of the weights in that dtype (prefill and decode; e.g.
    bf16 on a CPU with native bf16 dot products), ``None`` from the model as loaded; cached
    states stay in the model's dtype either way. ``ignore_eot`` never samples end-of-turn,
    for benchmarks that need replies of a fixed length.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        engine: EngineSettings,
        sampling: SamplingSettings,
        device: torch.device,
        *,
        metrics: EngineMetrics | None = None,
        decode_dtype: torch.dtype | None = None,
        ignore_eot: bool = False,
        replies: ReplyPicker | None = None,
    ) -> None:
        self._engine = engine
        self._sampling = sampling
        self._device = device
        self._decode_dtype = decode_dtype
        self._ignore_eot = ignore_eot
        self._replies = replies or ReplyPicker(ReplySettings(mode="generate"))
        self._interval_s = engine.stream_interval_ms / 1000
        self._inbox: queue.SimpleQueue[Work | Control] = queue.SimpleQueue()
        self._swap_lock = threading.Lock()
        self._pending_swap: Checkpoint | None = None
        self._model = self._load(checkpoint)
        self._old_models: list[ServedModel] = []
        self._waiting: deque[Work] = deque()
        self._outputs: list[Output] = []
        self._cache = ContextCache(engine.cache_bytes, self._spill)
        self.metrics = metrics or EngineMetrics(checkpoint.preset)
        self.stats = Stats(model_version=checkpoint.version)

    def _load(self, checkpoint: Checkpoint) -> ServedModel:
        model, max_batch = checkpoint.model, self._engine.max_batch
        self._replies.prepare(checkpoint)
        decoder = serving_copy(model, self._decode_dtype)
        prefill_rows = min(max_batch, self._engine.prefill_chunk_tokens // MIN_PREFILL_CHUNK)
        if model.max_context is None:
            # A recurrent prefill costs per timestep, nearly nothing per row: take them all.
            prefill_rows = max_batch
        cuda_graphs = self._engine.cuda_graphs and self._device.type == "cuda"
        tok = checkpoint.tokenizer
        banned = sorted(tok.special_ids - ({tok.eot_id} if not self._ignore_eot else set()))
        return ServedModel(
            checkpoint,
            prefill=PrefillBatch(model, decoder, prefill_rows),
            decode=DecodeBatch(model, decoder, max_batch, cuda_graphs=cuda_graphs),
            sampler=RowSampler(max_batch, model.device, banned),
            banned=banned,
        )

    @property
    def replies(self) -> ReplyPicker:
        """How replies are picked (the worker keeps its excluded users current)."""
        return self._replies

    @property
    def cuda_graphs(self) -> bool:
        """Whether the current model's decode step replays captured CUDA graphs."""
        return self._model.decode.graphed

    # -- called from the event loop (thread-safe) ----------------------------------------

    def submit(self, item: Work | Control) -> None:
        self._inbox.put(item)

    def swap(self, checkpoint: Checkpoint) -> None:
        """Serve ``checkpoint`` from the next step on."""
        with self._swap_lock:
            self._pending_swap = checkpoint

    # -- the torch thread ----------------------------------------------------------------

    def run(self, emit: Callable[[list[Output]], None], stop: threading.Event) -> None:
        """Step until ``stop`` is set, handing each step's outputs to ``emit``."""
        try:
            while not stop.is_set():
                outputs = self.step_once()
                if outputs:
                    emit(outputs)
        finally:
            self.metrics.close()

    def step_once(self) -> list[Output]:
        """One scheduling iteration; returns what it produced, in order.

        A step that raises fails the requests running in it (one bad step must not kill the
        engine); waiting requests are untouched.
        """
        try:
            self._step()
        except Exception:
            log.exception("model step failed; failing the running requests")
            self._fail_all("step_failed", "")
        outputs, self._outputs = self._outputs, []
        return outputs

    def _step(self) -> None:
        self._take_inbox(block=not self._busy)
        with torch.inference_mode():
            self._apply_swap()
            self._admit()
            self._prefill_pass()
            for model in (*self._old_models, self._model):
                self._decode_step(model)
        for drained in [m for m in self._old_models if not m.rows]:
            if drained.version != self._model.version:
                self._replies.forget_model(drained.version)
        self._old_models = [m for m in self._old_models if m.rows]
        self._update_stats()

    @property
    def _busy(self) -> bool:
        return bool(self._waiting or self._running)

    @property
    def _running(self) -> int:
        decoding = sum(len(m.rows) for m in (*self._old_models, self._model))
        return decoding + len(self._model.prefilling)

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
            self._replies.exclude([req.user])  # none of their lines is remembered from now on
        # A spilled copy in Redis is deleted by the worker along with the history.
        self._outputs.append(Applied(control))

    def _apply_swap(self) -> None:
        with self._swap_lock:
            checkpoint, self._pending_swap = self._pending_swap, None
        if checkpoint is None:
            return
        old = self._model
        if old.rows:
            self._old_models.append(old)
        # Sequences still prefilling restart on the new model: nothing was generated yet.
        self._waiting.extendleft(reversed(works_of(old.prefilling)))
        old.prefilling.clear()
        old.prefill.clear()
        if not old.rows and old.version != checkpoint.version:
            self._replies.forget_model(old.version)
        self._model = self._load(checkpoint)
        self._cache.clear()  # state from the old model means nothing to the new one
        log.info("swapped to model %s", checkpoint.version)

    # -- admission and prefill -----------------------------------------------------------

    def _admit(self) -> None:
        m = self._model
        rows = self._rows_per_request
        while (
            self._waiting
            and self._running + rows <= self._engine.max_batch
            and m.prefill.n + rows <= m.prefill.max_rows
        ):
            work = self._waiting.popleft()
            if work.received_s:
                self.metrics.queued(max(0.0, time.monotonic() - work.received_s))
            try:
                self._start(work)
            except ValueError as e:  # the message itself is unusable (e.g. empty once cleaned)
                self._outputs.append(Failed(work, "unusable", str(e)))
            except Exception:
                log.exception("could not start request %s", work.request.id)
                self._outputs.append(Failed(work, "start_failed"))

    @property
    def _rows_per_request(self) -> int:
        """Rows a request takes: ``hybrid`` samples ``n`` replies at once (as many as fit)."""
        if self._replies.mode != "hybrid":
            return 1
        m = self._model
        return max(1, min(self._replies.settings.n, self._engine.max_batch, m.prefill.max_rows))

    def _start(self, work: Work) -> None:
        """Answer ``work`` from memory (``retrieve`` mode, when a line matches), or start
        generating: its prompt's rows join the prefill batch."""
        model = self._model
        ckpt = model.checkpoint
        started_s = time.monotonic()
        params = SamplingParams.from_request(work.request.sampling, self._sampling)
        prompt = build_prompt(work.history, work.request.text, self._engine.history_max_chars)
        entry = self._cache.pop(work.request.conversation)
        if entry is None and work.spilled_state is not None:
            entry = deserialize_entry(work.spilled_state, ckpt.model.state_from_tensors)
        mode = self._replies.mode
        remembered = [] if mode == "generate" else self._replies.remembered(ckpt, work.request.text)
        if mode == "retrieve" and remembered:
            chosen = self._replies.choose(ckpt, prompt.truncated, remembered, work.history)
            prompt_tokens = len(ckpt.tokenizer.encode(prompt.truncated))
            self._send_remembered(work, model, chosen, entry, started_s, prompt_tokens)
            return
        stored = work.request.history is None  # stored history is trimmed at the front
        match = self._cache.match(
            entry, model.version, prompt.full, prompt.history if stored else None
        )
        pending = ckpt.tokenizer.encode(match.remainder) if match is not None else []
        if match is not None and pending:
            text, cached = prompt.full, match.state
        else:  # a miss (or, never in practice, nothing new to feed): recompute
            text, cached = prompt.truncated, None
            pending = ckpt.tokenizer.encode(prompt.truncated)
        pending = self._fit_context(pending, cached, params.max_new_tokens, model)
        cached_tokens = 0 if cached is None else cached.length
        self.metrics.cache_query_tokens(cached_tokens, len(pending))
        copies = self._rows_per_request
        group = None
        if mode == "hybrid":
            group = SampleGroup(work, copies, prompt.truncated, remembered, entry)
        for i in range(copies):
            seq = Running(
                work=work,
                model=model,
                params=nth_sample(params, work, i),
                prompt_text=text,
                pending=list(pending),
                prompt_tokens=len(pending),
                cached_tokens=cached_tokens,
                eot_id=ckpt.tokenizer.eot_id,
                started_s=started_s,
                group=group,
            )
            seq.row = model.prefill.join(cached)  # copies the cached state into the row
            model.prefilling.append(seq)

    @staticmethod
    def _fit_context(
        pending: list[int], state: SeqState | None, max_new: int, model: ServedModel
    ) -> list[int]:
        """Keep a fresh prompt within a bounded model's window (the newest tokens win)."""
        limit = model.checkpoint.model.max_context
        if limit is None or state is not None:
            return pending  # unbounded, or the model's own sliding window handles it
        # Leave room for a quarter window of reply before the window first has to slide.
        keep = max(1, limit - min(max_new, limit // 4))
        return pending[-keep:]

    def _prefill_pass(self) -> None:
        """Feed every prefilling row a chunk of its prompt; finished prompts start decoding."""
        m = self._model
        seqs = m.prefilling
        if not seqs:
            return
        size = max(MIN_PREFILL_CHUNK, self._engine.prefill_chunk_tokens // len(seqs))
        limit = m.checkpoint.model.max_context
        if limit is not None:
            size = min(size, limit // 2)  # a window model takes at most half a window at once
        chunks = [s.pending[:size] for s in seqs]
        for s in seqs:
            s.pending = s.pending[size:]
        logits = m.prefill.feed(chunks)  # (p, V)
        done = [s for s in seqs if not s.pending]
        if not done:
            return
        firsts = sample_next(
            logits[[s.row for s in done]], [s.params for s in done], [[]] * len(done), m.banned
        )
        self.metrics.generated(len(done))
        self.stats.tokens_generated += len(done)
        now = time.monotonic()
        for seq, token in zip(done, firsts, strict=True):
            self.metrics.prompt(seq.prompt_tokens)
            if self._accept(seq, token, now):
                state = m.prefill.state(seq.row)
                remove_row(m.prefill, m.prefilling, seq)
                self._finish(seq, state)
            else:
                raw = m.prefill.raw_state(seq.row)
                remove_row(m.prefill, m.prefilling, seq)
                self._join(seq, raw)

    # -- decoding ------------------------------------------------------------------------

    def _join(self, seq: Running, raw_state: object) -> None:
        """``seq`` decodes from now on: copy its state into a free row of its model's batch."""
        m = seq.model
        seq.row = m.decode.join(raw_state, seq.generated[-1])
        m.sampler.join(seq.row, seq.params, seq.generated)
        m.rows.append(seq)

    def _leave(self, seq: Running) -> SeqState | None:
        """Free ``seq``'s decode row; its state if the context cache will want it."""
        m = seq.model
        row = seq.row
        state = m.decode.state(row) if m is self._model else None
        moved_from = remove_row(m.decode, m.rows, seq)
        if moved_from is not None:
            m.sampler.move(moved_from, row)
        return state

    def _decode_step(self, m: ServedModel) -> None:
        if not m.rows:
            return
        logits = m.decode.step()  # (n, V)
        ids = m.sampler.sample(logits)  # (n,)
        m.decode.tokens[: len(m.rows)].copy_(ids)  # each row's next input, without the host
        tokens = ids.tolist()
        self.metrics.generated(len(tokens))
        self.stats.tokens_generated += len(tokens)
        now = time.monotonic()
        finished = [s for s, t in zip(m.rows, tokens, strict=True) if self._accept(s, t, now)]
        for seq in finished:
            self._finish(seq, self._leave(seq))

    def _accept(self, seq: Running, token: int, now: float) -> bool:
        """Record a sampled token; whether the sequence is done. Streams progress when due."""
        if seq.first_token_s is None:
            seq.first_token_s = now
        if token == seq.eot_id:
            seq.finish_reason = "stop"
            return True
        seq.generated.append(token)
        if seq.params.stop and self._hit_stop(seq):
            seq.finish_reason = "stop"
        elif len(seq.generated) >= seq.params.max_new_tokens:
            seq.finish_reason = "length"
        elif seq.group is None and now - seq.last_emit_s >= self._interval_s:
            self._progress(seq, now)
        return seq.finish_reason is not None

    @staticmethod
    def _hit_stop(seq: Running) -> bool:
        # Only the tail can hold a stop string that was not there one token ago.
        width = STOP_TAIL_TOKENS_PER_CHAR * max(len(s) for s in seq.params.stop) + 1
        tail = seq.model.checkpoint.tokenizer.decode(seq.generated[-width:])
        return any(stop in tail for stop in seq.params.stop)

    def _progress(self, seq: Running, now: float) -> None:
        # Only the tokens after the last character boundary are decoded: text decoded up to a
        # complete character never changes (decoding concatenates there), so streaming costs
        # O(1) per token rather than a decode of the whole reply each time.
        tail = seq.model.checkpoint.tokenizer.decode(seq.generated[seq.final_tokens :])
        stable = tail.rstrip("\ufffd")  # a multi-byte character may still be incomplete
        if len(stable) > seq.tail_chars:
            self._outputs.append(Progress(seq.work, stable[seq.tail_chars :]))
            seq.tail_chars = len(stable)
            seq.last_emit_s = now
        if stable == tail:
            seq.final_tokens, seq.tail_chars = len(seq.generated), 0

    def _finish(self, seq: Running, state: SeqState | None) -> None:
        reply, entry = self._settle(seq, state)
        if seq.group is not None:
            self._finish_sample(seq.group, seq, reply, entry)
            return
        if entry is not None:
            self._cache.put(seq.conversation, entry)
        self.metrics.replied("generated")
        self._outputs.append(Finished(seq.work, self._reply(seq, reply)))

    def _settle(self, seq: Running, state: SeqState | None) -> tuple[str, CacheEntry | None]:
        """``seq``'s reply text, and the cache entry its state makes (if it is to be kept)."""
        ckpt = seq.model.checkpoint
        raw = ckpt.tokenizer.decode(seq.generated)
        # Tidy like every stored turn, so the next prompt reproduces it (and hits the cache).
        reply = clean_text(cut_at_stop(raw, seq.params.stop))
        if state is None or seq.model is not self._model:
            return reply, None
        # The state has consumed every generated token but the last one sampled (after
        # <|eot|> nothing more is fed; after a length or stop cut, the last one is not).
        consumed = (
            raw
            if seq.finish_reason == "stop" and not seq.params.stop
            else (ckpt.tokenizer.decode(seq.generated[:-1]))
        )
        return reply, CacheEntry(ckpt.version, seq.prompt_text + consumed, state)

    def _finish_sample(
        self, group: SampleGroup, seq: Running, reply: str, entry: CacheEntry | None
    ) -> None:
        """One of a ``hybrid`` request's samples is done; with the last, choose and answer."""
        group.done.append((seq, reply, entry))
        if len(group.done) < group.size:
            return
        samples = [r for _, r, _ in group.done]
        candidates = [c for c in samples + group.remembered if c.strip()]
        chosen = samples[0]
        if candidates:
            ckpt = seq.model.checkpoint
            chosen = self._replies.choose(ckpt, group.prompt_text, candidates, group.work.history)
        for sample, text, sample_entry in group.done:
            if text == chosen:
                if sample_entry is not None:
                    self._cache.put(sample.conversation, sample_entry)
                self.metrics.replied("generated")
                self._outputs.append(Finished(group.work, self._reply(sample, text)))
                return
        self._send_remembered(
            group.work, seq.model, chosen, group.entry, seq.started_s, seq.prompt_tokens
        )

    def _send_remembered(
        self,
        work: Work,
        model: ServedModel,
        text: str,
        entry: CacheEntry | None,
        started_s: float,
        prompt_tokens: int,
    ) -> None:
        """Answer ``work`` with a remembered line. The conversation's cached state stays
        valid: what it consumed is still a prefix of the conversation."""
        if entry is not None and model is self._model:
            self._cache.put(work.request.conversation, entry)
        now = time.monotonic()
        arrived = work.received_s or started_s
        tokens = len(model.checkpoint.tokenizer.encode(text))
        self.metrics.finished("stop", now - arrived, now - arrived, tokens, 0.0)
        self.metrics.replied("remembered")
        reply = Reply(
            text=text,
            finish_reason="stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=tokens,
            queue_ms=max(0.0, started_s - work.received_s) * 1000 if work.received_s else 0.0,
            ttft_ms=(now - started_s) * 1000,
            total_ms=(now - started_s) * 1000,
            model_version=model.version,
        )
        self._outputs.append(Finished(work, reply))

    def _reply(self, seq: Running, text: str) -> Reply:
        now = time.monotonic()
        work = seq.work
        first = seq.first_token_s or now
        arrived = work.received_s or seq.started_s
        reason = seq.finish_reason or "stop"
        self.metrics.finished(
            reason, first - arrived, now - arrived, len(seq.generated), now - first
        )
        return Reply(
            text=text,
            finish_reason=reason,
            prompt_tokens=seq.prompt_tokens,
            completion_tokens=len(seq.generated),
            queue_ms=max(0.0, seq.started_s - work.received_s) * 1000 if work.received_s else 0.0,
            ttft_ms=(first - seq.started_s) * 1000,
            total_ms=(now - seq.started_s) * 1000,
            model_version=seq.model.version,
        )

    # -- failures, spills, stats ---------------------------------------------------------

    def _fail_all(self, failure: Failure, detail: str) -> None:
        for m in (*self._old_models, self._model):
            for work in works_of([*m.prefilling, *m.rows]):
                self._outputs.append(Failed(work, failure, detail))
            m.prefilling.clear()
            m.rows.clear()
            m.prefill.clear()
            m.decode.clear()
        self._old_models = []

    def _spill(self, conversation: str, entry: CacheEntry) -> None:
        self._outputs.append(Spill(conversation, serialize_entry(entry)))

    def _update_stats(self) -> None:
        running, waiting = self._running, len(self._waiting)
        self.stats.running = running
        self.stats.waiting = waiting
        self.stats.cache_hits = self._cache.hits
        self.stats.cache_queries = self._cache.queries
        self.stats.model_version = self._model.version
        self.stats.cache_bytes = self._cache.nbytes
        self.metrics.set_load(running, waiting, self._cache.nbytes)
