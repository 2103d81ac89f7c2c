"""Benchmark of the engine: batching throughput, follow-up latency, queue overhead, end to end.

Prints one JSON object. Every ratio compares two measurements taken in this one run, on the
same machine, model and thread count. Other work on the machine only ever slows a run down,
so each side is measured ``--repeats`` times, interleaved, and its best run kept (TTFT: its
fastest), as ``timeit`` does:

- ``gru_throughput_ratio`` / ``transformer_throughput_ratio``: tokens/s of 64 concurrent
  conversations through the scheduler, over a one-request-at-a-time loop on the same model
  in the same dtype: batch 1, one token per step, carrying the model's own state (the GRU's
  hidden state — the classic char-RNN loop — or the GPT's KV cache). The headline takes the
  engine's better dtype and the loop in that dtype; ``..._fp32`` / ``..._bf16`` pair each
  dtype with itself. ``..._static_ratio``: the engine over a static batch (all 64 requests
  as one (64, T) batch, decoded together with the same state until the last is done, as
  nanoGPT's ``generate`` allows with a batch, plus the cache), same dtype. The GPT's
  ``transformer_naive_ratio`` (nanoGPT's ``generate`` as written: the whole context re-run
  every step) is kept, labelled naive, and is no headline. Default presets, random weights;
  every side generates exactly ``max_new_tokens`` per request (end-of-turn banned) and
  samples with temperature 0.8 and nothing else.
- ``followup``: time to first token of a follow-up to a conversation of 500, 2,000 and 8,000
  characters (``followup_chars``), per model: its state cached in memory, recomputed from the
  stored history (the GRU through ``nn.GRU``'s fused sequence kernel; the GPT's recompute is
  capped by its window), and restored from the state the cache spilled to Redis (the GET and
  the deserialising counted). Each is the fastest of ``ttft_repeats``, from the request's
  arrival to its first token. ``followup_ttft_ratio`` (``..._gpt``): cached over recomputed
  at 2,000 characters.
- ``queue_p50_ms``, ``queue_p99_ms``, ``queue_msgs_per_s``: ``bench.queue_overhead``'s measurement
  (stub engine in its own process: adapter XADD -> engine -> reply stream -> adapter).
- ``e2e_fraction``: tokens/s of 64 concurrent users chatting through the web adapter
  (HTTP + SSE), Redis and an engine worker in its own process, over the best bare
  scheduler's tokens/s on the same requests (measured at 1..cores torch threads, the best
  kept: ``e2e_bare_engine_threads``). The engine process runs ``--e2e-threads`` torch threads
  (default: all cores but one, which the adapter, the load generator and Redis need — as a
  deployment of all three on one small machine would set ``engine.torch_threads``);
  ``e2e_fraction_same_threads`` divides by the bare engine at that same thread count.

Usage: ``python -m bench.serving [--quick] [--redis-url URL] [--threads N] [--e2e-threads N]
[--note TEXT]``. It prints its JSON; ``python -m bench.serving | python -m bench.report --save
serving-cpu`` saves it to ``bench/results/`` with the commit and machine.
``--threads`` sets torch's threads for the other sections; by default the throughput section
measures each side at 1..cores threads and keeps each side's best (an engine on a busy shared
machine does best on fewer threads than cores, see the README's figures). Redis: database 7
of the Redis on 127.0.0.1:6379 (flushed before and after) unless ``--redis-url`` is given,
else an embedded server.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/serving.py` puts bench/ first on sys.path; the repository root belongs there,
# so `bench`, `bot` and `engine` import as they do under `python -m bench.serving`.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import string
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import aiohttp
import redis as redis_sync
import torch
from aiohttp import web
from prometheus_client import CollectorRegistry

from bench import queue_overhead as queue_bench
from bench.baselines import (
    MESSAGE,
    TEMPERATURE,
    char_rnn_loop,
    in_dtype,
    loop_tokens_per_s,
    nanogpt_generate,
    static_tokens_per_s,
)
from bot import keys
from bot.queue import Delivery, RequestConsumer
from bot.redis import connect
from bot.registry import ModelRegistry
from bot.settings import EngineSettings, RedisSettings, SamplingSettings, Settings, WebSettings
from bot.wire import ChatRequest, Sampling, Turn
from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.hardware import cpu_has_native_bf16
from engine.models import build_model, preset_config
from engine.serve.metrics import EngineMetrics
from engine.serve.scheduler import Scheduler
from engine.serve.work import Finished, Spill, Work
from engine.serve.worker import EngineWorker
from engine.tokenizer import train_char_tokenizer

log = logging.getLogger("bench.serving")

E2E_DB = 7
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


def throughput(
    ckpt: Checkpoint, name: str, sizes: Sizes, repeats: int, thread_counts: list[int]
) -> dict[str, Any]:
    """Each side at each thread count, best of ``repeats``; each side's best count wins.

    Sides, in float32 and in bf16: the engine, the batch-1 cached loop and the static batch;
    for the GPT also the naive loop (float32). Every ratio pairs sides of one dtype."""
    gpt = ckpt.config.arch == "gpt"
    new = sizes.gpt_new_tokens if gpt else sizes.gru_new_tokens
    n_loop = sizes.gpt_baseline_requests if gpt else sizes.gru_baseline_requests
    c = sizes.concurrency
    models = {"fp32": ckpt, "bf16": in_dtype(ckpt, torch.bfloat16)}
    engines = {
        "fp32": scheduler_for(ckpt, new, None),
        "bf16": scheduler_for(ckpt, new, torch.bfloat16),
    }
    sides: dict[str, Callable[[], float]] = {}
    for d in ("fp32", "bf16"):
        m, e = models[d], engines[d]
        sides[f"engine_{d}"] = lambda e=e: engine_tokens_per_s(e, c, c)
        sides[f"loop_{d}"] = lambda m=m: loop_tokens_per_s(char_rnn_loop, m, n_loop, new)
        sides[f"static_{d}"] = lambda m=m: static_tokens_per_s(m, c, new)
    if gpt:
        sides["naive_fp32"] = lambda: loop_tokens_per_s(nanogpt_generate, ckpt, 1, new)
    sides["engine_fp32"]()  # warm up both engines
    sides["engine_bf16"]()
    runs = [(side, n) for side in sides for n in thread_counts]
    got = best_of(repeats, *(on_threads(n, sides[side]) for side, n in runs))
    best = {
        side: max((v, n) for (s, n), v in zip(runs, got, strict=True) if s == side)
        for side in sides
    }
    d = "bf16" if best["engine_bf16"][0] > best["engine_fp32"][0] else "fp32"
    tps = {side: v for side, (v, _) in best.items()}
    out: dict[str, Any] = {
        f"{name}_throughput_ratio": round(tps[f"engine_{d}"] / tps[f"loop_{d}"], 2),
        f"{name}_static_ratio": round(tps[f"engine_{d}"] / tps[f"static_{d}"], 2),
        f"{name}_engine_decode_dtype": "bfloat16" if d == "bf16" else "float32",
        f"{name}_engine_tokens_per_s": round(tps[f"engine_{d}"]),
        f"{name}_engine_threads": best[f"engine_{d}"][1],
    }
    for dt in ("fp32", "bf16"):
        out[f"{name}_throughput_ratio_{dt}"] = round(tps[f"engine_{dt}"] / tps[f"loop_{dt}"], 2)
        out[f"{name}_static_ratio_{dt}"] = round(tps[f"engine_{dt}"] / tps[f"static_{dt}"], 2)
        for side in ("engine", "loop", "static"):
            out[f"{name}_{side}_{dt}_tokens_per_s"] = round(tps[f"{side}_{dt}"], 1)
            out[f"{name}_{side}_{dt}_threads"] = best[f"{side}_{dt}"][1]
    if gpt:
        out[f"{name}_naive_ratio"] = round(tps["engine_fp32"] / tps["naive_fp32"], 2)
        out[f"{name}_naive_fp32_tokens_per_s"] = round(tps["naive_fp32"], 1)
    out[f"{name}_new_tokens"] = new
    out[f"{name}_concurrency"] = c
    return out


# -- follow-up time to first token ----------------------------------------------------------------


def long_history(chars: int) -> tuple[Turn, ...]:
    turns: list[Turn] = []
    line = "so what do you think about that, honestly? tell me more about your day. "
    while sum(len(t.text) for t in turns) < chars:
        role = "user" if len(turns) % 2 == 0 else "bot"
        turns.append(Turn(role, line[: 40 + 7 * (len(turns) % 5)]))  # type: ignore[arg-type]
    return tuple(turns)


def followup_ttft_ms(ckpt: Checkpoint, sizes: Sizes) -> tuple[float, float]:
    """Fastest TTFT of a follow-up (cached state, recomputed history), in milliseconds."""
    history = long_history(sizes.history_chars)
    greedy = Sampling(temperature=0.0, max_new_tokens=16)
    cached_ms, fresh_ms = [], []
    for i in range(sizes.ttft_repeats):
        conv = f"ttft-{i}"
        s = scheduler_for(ckpt, 16, None)
        # The first exchange leaves the conversation's state in the cache...
        first = drive(s, [chat_work(i, "hello!", history, greedy, conv)], 1)[0]
        history2 = (*history, Turn("user", "hello!"), Turn("bot", first.reply.text))
        follow = chat_work(i, "and then?", history2, greedy, conv)
        cached_ms.append(drive(s, [follow], 1)[0].reply.ttft_ms)
        # ...which a fresh engine does not have: it recomputes from the stored history.
        fresh = scheduler_for(ckpt, 16, None)
        fresh_ms.append(
            drive(fresh, [chat_work(i, "and then?", history2, greedy, conv)], 1)[0].reply.ttft_ms
        )
    return min(cached_ms), min(fresh_ms)


STATE_REMAINDER_TOKENS = 64
"""At most what a follow-up continuing a state feeds (its message, the last reply, markers)."""


def answer(s: Scheduler, work: Work) -> tuple[Finished, list[Spill]]:
    """Step ``s`` until ``work`` is answered: its reply, and the states the cache spilled."""
    s.submit(work)
    spills: list[Spill] = []
    while True:
        for out in s.step_once():
            if isinstance(out, Spill):
                spills.append(out)
            elif isinstance(out, Finished) and out.work is work:
                return out, spills


def first_token_ms(reply: Finished) -> float:
    """From the request's ``received_s`` (before any Redis read) to its first token."""
    return reply.reply.queue_ms + reply.reply.ttft_ms


def followup_row(ckpt: Checkpoint, chars: int, repeats: int, redis_client: Any) -> dict[str, float]:
    """Fastest time to first token of a follow-up to a ``chars``-character conversation:
    its state cached in memory, recomputed from the stored history, or restored from the
    state the cache spilled to Redis (GET, then deserialised, in the time)."""
    history = long_history(chars)
    # One token per reply: the state then ends exactly at the prompt, so the next prompt
    # continues it whatever (random-weight) character the reply was and however it is tidied.
    greedy = Sampling(temperature=0.0, max_new_tokens=1)
    engine = {"history_max_chars": 4 * chars}  # the whole history, however long

    def from_state(done: Finished) -> Finished:
        if done.reply.prompt_tokens > STATE_REMAINDER_TOKENS:
            raise SystemExit("a follow-up recomputed its history instead of using its state")
        return done

    cached, recomputed, restored = [], [], []
    for i in range(repeats):
        conv = f"ttft-{chars}-{i}-{uuid.uuid4().hex[:6]}"
        warm = scheduler_for(ckpt, 16, None, **engine)
        first, _ = answer(warm, chat_work(i, "hello!", history, greedy, conv))
        history2 = (*history, Turn("user", "hello!"), Turn("bot", first.reply.text))
        # Cached: the engine that answered the first message still holds its state.
        done, _ = answer(warm, chat_work(i, "and then?", history2, greedy, conv))
        cached.append(first_token_ms(from_state(done)))
        # Recomputed: an engine without it (no memory budget, so it spills the state after).
        cold = scheduler_for(ckpt, 16, None, cache_bytes=0, **engine)
        done, spills = answer(cold, chat_work(i, "and then?", history2, greedy, conv))
        recomputed.append(first_token_ms(done))
        # Restored: the next follow-up on another engine, from the state spilled to Redis.
        (spill,) = [sp for sp in spills if sp.conversation == conv]
        redis_client.set(keys.state(conv), spill.data)
        history3 = (*history2, Turn("user", "and then?"), Turn("bot", done.reply.text))
        other = scheduler_for(ckpt, 16, None, **engine)
        received = time.monotonic()
        data = redis_client.get(keys.state(conv))
        request = chat_work(i, "go on", history3, greedy, conv).request
        work = Work(Delivery(0, "0-0", request), request, history3, data, received)
        done, _ = answer(other, work)
        restored.append(first_token_ms(from_state(done)))
        redis_client.delete(keys.state(conv))
    return {
        "cached_ms": round(min(cached), 2),
        "recomputed_ms": round(min(recomputed), 2),
        "restored_ms": round(min(restored), 2),
    }


def followup(
    grus: Checkpoint, gpt: Checkpoint, sizes: Sizes, redis_url: str | None
) -> dict[str, Any]:
    table: dict[str, dict[str, dict[str, float]]] = {}
    with queue_bench.redis_url(redis_url, embedded=False) as url:
        client = redis_sync.Redis.from_url(url)
        try:
            for name, ckpt in (("gru", grus), ("gpt", gpt)):
                table[name] = {
                    str(chars): followup_row(ckpt, chars, sizes.ttft_repeats, client)
                    for chars in sizes.followup_chars
                }
        finally:
            client.close()
    out: dict[str, Any] = {
        "followup": table,
        "followup_chars": list(sizes.followup_chars),
        "followup_repeats": sizes.ttft_repeats,
    }
    for name, key in (("", "gru"), ("_gpt", "gpt")):
        row = table[key][str(sizes.history_chars)]
        out[f"followup_ttft_ratio{name}"] = round(row["cached_ms"] / row["recomputed_ms"], 3)
    out["followup_history_chars"] = sizes.history_chars
    return out


# -- queue overhead (bench.queue_overhead's measurement) ---------------------------------------


def queue_figures(redis_url: str | None, sizes: Sizes) -> dict[str, Any]:
    args = argparse.Namespace(
        requests=sizes.queue_requests,
        throughput_requests=sizes.queue_throughput_requests,
        concurrency=128,
        shards=4,
        embedded=False,
    )
    with queue_bench.redis_url(redis_url, embedded=False) as url:
        got = asyncio.run(queue_bench.measure(url, args))
    return {k: v for k, v in got.items() if k.startswith(("queue_", "ping_", "p50_"))}


# -- end to end: web adapter + Redis + engine worker ----------------------------------------------


def e2e_settings(url: str, data_dir: Path, new_tokens: int) -> Settings:
    return Settings(
        data_dir=data_dir,
        redis=RedisSettings(url=url, shards=4, max_stream_len=100_000),
        engine=EngineSettings(max_batch=64, read_block_ms=5),
        sampling=SamplingSettings(max_new_tokens=new_tokens),
        # The load generator is one client: per-client limits would measure the limiter.
        web=WebSettings(rate_limit=None, global_rate_limit=None),
    )


def engine_process(
    url: str, ckpt_dir: str, settings_json: str, threads: int, ready: MpEvent, stop: MpEvent
) -> None:
    """An engine worker serving the checkpoint until ``stop`` (its own process, as in prod)."""
    if threads:
        torch.set_num_threads(threads)
    settings = Settings.model_validate_json(settings_json)

    async def main() -> None:
        redis = await connect(url)
        ckpt = load_checkpoint(Path(ckpt_dir), device="cpu")
        scheduler = Scheduler(
            ckpt,
            settings.engine,
            settings.sampling,
            torch.device("cpu"),
            metrics=EngineMetrics("bench", CollectorRegistry()),
            ignore_eot=True,
        )
        consumer = RequestConsumer(redis, settings.redis, consumer="bench-engine")
        worker = EngineWorker(settings, redis, consumer, scheduler, "bench-engine")
        done = asyncio.Event()
        task = asyncio.create_task(worker.run(done))
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        done.set()
        await task
        await redis.aclose()

    asyncio.run(main())


async def chat_over_http(session: aiohttp.ClientSession, base: str) -> int:
    """One chat through POST /api/chat; the completion tokens of its ``done`` event."""
    body = {"conversation": uuid.uuid4().hex, "text": MESSAGE}
    async with session.post(f"{base}/api/chat", json=body) as response:
        response.raise_for_status()
        event = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("done", "error"):
                data = json.loads(line[6:])
                if event == "error":
                    raise RuntimeError(f"chat failed: {data}")
                return int(data["completion_tokens"])
    raise RuntimeError("the reply stream ended without a done event")


async def web_load(settings: Settings, n: int, concurrency: int) -> float:
    """Serve the web adapter here and chat ``n`` times, ``concurrency`` users at once."""
    from adapters.web.app import create_app  # the adapter needs no torch; imported late

    redis = await connect(settings.redis.url or "")
    app = create_app(
        settings, redis, adapter_id="bench-web", registry=ModelRegistry(settings.models_dir)
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    counter = iter(range(n))
    tokens = 0

    async def user(session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        for _ in counter:
            n = await chat_over_http(session, base)  # not `tokens += await`: that reads first
            tokens += n

    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await chat_over_http(session, base)  # warm up every path once
            start = time.perf_counter()
            await asyncio.gather(*(user(session) for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
    finally:
        await runner.cleanup()
        await redis.aclose()
    return tokens / elapsed


@contextlib.contextmanager
def e2e_redis(given: str | None) -> Iterator[str]:
    with queue_bench.redis_url(given, embedded=False) as url:
        if given is None and url == queue_bench.DEFAULT_URL:
            url = url.rsplit("/", 1)[0] + f"/{E2E_DB}"
        yield url


async def _flush(url: str) -> None:
    redis = await connect(url)
    await redis.flushdb()
    await redis.aclose()


def end_to_end(
    ckpt: Checkpoint, sizes: Sizes, redis_url: str | None, threads: int, repeats: int
) -> dict[str, Any]:
    with torch_threads(threads):
        return _end_to_end(ckpt, sizes, redis_url, threads, repeats)


def _end_to_end(
    ckpt: Checkpoint, sizes: Sizes, redis_url: str | None, threads: int, repeats: int
) -> dict[str, Any]:
    bare = scheduler_for(ckpt, sizes.e2e_new_tokens, None)
    default = Sampling()  # what the web page sends: the engine's default sampling
    load = (sizes.e2e_requests, sizes.concurrency)
    counts = list(range(1, (os.cpu_count() or 1) + 1))  # the bare engine's thread counts
    engine_tokens_per_s(bare, sizes.concurrency, sizes.concurrency, default)  # warm up
    with e2e_redis(redis_url) as url, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_flush(url))
        settings = e2e_settings(url, Path(tmp), sizes.e2e_new_tokens)
        ctx = mp.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        proc = ctx.Process(
            target=engine_process,
            args=(url, str(ckpt.path), settings.model_dump_json(), threads, ready, stop),
            daemon=True,
        )
        proc.start()
        try:
            if not ready.wait(120):
                raise SystemExit("the engine process did not start")
            *bare_tps, web_tps = best_of(
                repeats,
                *(on_threads(n, lambda: engine_tokens_per_s(bare, *load, default)) for n in counts),
                lambda: asyncio.run(web_load(settings, *load)),
            )
        finally:
            stop.set()
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
            asyncio.run(_flush(url))
    best = max(range(len(counts)), key=lambda i: bare_tps[i])
    same = bare_tps[counts.index(threads)] if threads in counts else None
    return {
        "e2e_fraction": round(web_tps / bare_tps[best], 3),
        "e2e_tokens_per_s": round(web_tps),
        "e2e_bare_engine_tokens_per_s": round(bare_tps[best]),
        "e2e_bare_engine_threads": counts[best],
        "e2e_bare_engine_by_threads": {
            str(n): round(t) for n, t in zip(counts, bare_tps, strict=True)
        },
        "e2e_fraction_same_threads": None if same is None else round(web_tps / same, 3),
        "e2e_model": ckpt.preset,
        "e2e_engine_threads": threads,
        "e2e_users": sizes.concurrency,
        "e2e_requests": sizes.e2e_requests,
        "e2e_new_tokens": sizes.e2e_new_tokens,
    }


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument(
        "--e2e-threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="the engine's torch threads in the end-to-end section (default: cores - 1)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (best kept)")
    parser.add_argument("--note", action="append", default=[], help="a note for the JSON")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["throughput", "ttft", "queue", "e2e"]
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else Sizes()
    repeats = args.repeats or (1 if args.quick else 5)
    result: dict[str, Any] = {
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
    }
    start, load_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        gru, gpt = bench_checkpoint(Path(tmp), "gru"), bench_checkpoint(Path(tmp), "gpt")
        if "throughput" not in args.skip:
            counts = [args.threads] if args.threads else list(range(1, (os.cpu_count() or 1) + 1))
            result |= throughput(gru, "gru", sizes, repeats, counts)
            result |= throughput(gpt, "transformer", sizes, repeats, counts)
        if "ttft" not in args.skip:
            result |= followup(gru, gpt, sizes, args.redis_url)
        if "queue" not in args.skip:
            result |= queue_figures(args.redis_url, sizes)
        if "e2e" not in args.skip:
            result |= end_to_end(gpt, sizes, args.redis_url, args.e2e_threads, repeats)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["load_average"] = {"start": load_start, "end": os.getloadavg()}
    result["notes"] = args.note
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
