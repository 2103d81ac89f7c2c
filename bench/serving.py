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
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench import queue_overhead as queue_bench
from bench.baselines import (
    char_rnn_loop,
    in_dtype,
    loop_tokens_per_s,
    nanogpt_generate,
    static_tokens_per_s,
)
from bench.end_to_end import end_to_end
from bench.engine_runs import (
    QUICK,
    Sizes,
    bench_checkpoint,
    best_of,
    engine_tokens_per_s,
    on_threads,
    scheduler_for,
)
from bench.followup import followup
from engine.checkpoint import Checkpoint
from engine.hardware import cpu_has_native_bf16


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
