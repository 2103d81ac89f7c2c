"""What bench/serving.py's sections share: the sizes, the models, and the scheduler driven with
chat requests until they are answered (tokens/s, best of interleaved runs, thread counts)."""

from __future__ import annotations

import contextlib
import string
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from bench.baselines import MESSAGE, TEMPERATURE
from bot.queue import Delivery
from bot.settings import EngineSettings, SamplingSettings
from bot.wire import ChatRequest, Sampling, Turn
from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.models import build_model, preset_config
from engine.serve.metrics import EngineMetrics
from engine.serve.scheduler import Scheduler
from engine.serve.work import Finished, Work
from engine.tokenizer import train_char_tokenizer

PLAIN = Sampling(temperature=TEMPERATURE, top_k=0, top_p=1.0, repetition_penalty=1.0)
"""What both sides of a throughput comparison sample with: the classic loop's temperature."""


@dataclass(frozen=True)
class Sizes:
    concurrency: int = 64
    gru_new_tokens: int = 256
    gpt_new_tokens: int = 128
    gru_baseline_requests: int = 8
    gpt_baseline_requests: int = 2
    history_chars: int = 2_000
    followup_chars: tuple[int, ...] = (500, 2_000, 8_000)
    ttft_repeats: int = 5
    e2e_requests: int = 256
    e2e_new_tokens: int = 128
    queue_requests: int = 2_000
    queue_throughput_requests: int = 20_000


QUICK = Sizes(
    concurrency=16,
    gru_new_tokens=32,
    gpt_new_tokens=16,
    gru_baseline_requests=2,
    gpt_baseline_requests=1,
    ttft_repeats=2,
    followup_chars=(500, 2_000),
    e2e_requests=32,
    e2e_new_tokens=16,
    queue_requests=200,
    queue_throughput_requests=2_000,
)


# -- models ---------------------------------------------------------------------------------------


def bench_checkpoint(
    directory: Path, preset: str, device: str = "cpu", dtype: torch.dtype | None = None
) -> Checkpoint:
    """A randomly initialised ``preset`` with a character vocabulary, saved and loaded back
    (onto ``device``, in ``dtype``: as the engine service loads it)."""
    torch.manual_seed(0)
    tokenizer = train_char_tokenizer([string.printable])
    model = build_model(preset_config(preset, tokenizer.vocab_size))
    path = save_checkpoint(
        directory / preset,
        model,
        tokenizer,
        preset=preset,
        metrics={},
        provenance={},
        overwrite=True,
    )
    return load_checkpoint(path, device=device, dtype=dtype)


def scheduler_for(
    ckpt: Checkpoint, sizes_new: int, decode_dtype: torch.dtype | None, **engine: Any
) -> Scheduler:
    settings = EngineSettings(**{"max_batch": 64, **engine})
    return Scheduler(
        ckpt,
        settings,
        SamplingSettings(max_new_tokens=sizes_new),
        ckpt.model.device,
        metrics=EngineMetrics("bench", CollectorRegistry()),
        decode_dtype=decode_dtype,
        ignore_eot=True,
    )


def chat_work(
    i: int,
    text: str = MESSAGE,
    history: tuple[Turn, ...] = (),
    sampling: Sampling = PLAIN,
    conversation: str | None = None,
) -> Work:
    request = ChatRequest(
        id=f"r{i}-{uuid.uuid4().hex[:6]}",
        conversation=conversation or f"c{i}",
        reply_to="bench",
        text=text,
        sampling=sampling,
    )
    return Work(Delivery(0, "0-0", request), request, history, None, time.monotonic())


def drive(s: Scheduler, works: list[Work], concurrency: int) -> list[Finished]:
    """Keep ``concurrency`` requests in flight until every one of ``works`` is answered."""
    todo = list(reversed(works))
    in_flight, done = 0, []
    while todo or in_flight:
        while todo and in_flight < concurrency:
            s.submit(todo.pop())
            in_flight += 1
        finished = [o for o in s.step_once() if isinstance(o, Finished)]
        done += finished
        in_flight -= len(finished)
    return done


def engine_tokens_per_s(
    s: Scheduler, n: int, concurrency: int, sampling: Sampling = PLAIN
) -> float:
    works = [chat_work(i, sampling=sampling) for i in range(n)]
    start = time.perf_counter()
    done = drive(s, works, concurrency)
    return sum(f.reply.completion_tokens for f in done) / (time.perf_counter() - start)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def best_of(repeats: int, *measures: Callable[[], float]) -> list[float]:
    """Each measure's best of ``repeats`` runs, the measures interleaved (drift hits all)."""
    runs: list[list[float]] = [[] for _ in measures]
    for _ in range(repeats):
        for got, measure in zip(runs, measures, strict=True):
            got.append(measure())
    return [max(got) for got in runs]


def on_threads(n: int, measure: Callable[[], float]) -> Callable[[], float]:
    def run() -> float:
        with torch_threads(n):
            return measure()

    return run
