"""Parley's engine against the engines a user would pick instead, on the same weights.

One model is served by each side: Parley's scheduler (continuous batching, in the dtype
``engine.dtype = "auto"`` picks), Hugging Face ``transformers`` ``generate`` (static batches,
its KV cache) and CTranslate2 ``generate_batch`` (the same export converted by its
transformers converter), all with the same torch/CT2 thread count and the same sampling
(temperature 0.8 over the whole vocabulary). Sides: ``parley``, ``transformers`` (float32),
``ctranslate2`` (float32) and ``ctranslate2-int8`` (what CT2 recommends on a CPU); with a GPU,
``-cuda`` sides too (bf16). transformers in bfloat16 is no CPU side: on the 2-core
development VM (AVX512-BF16) its ``generate`` ran about 10x slower than in float32.

Workloads:

- (a) 64 sequences x 128 new tokens, all at once (end-of-turn banned on every side).
- (b) chat: 256 conversations arriving as a Poisson process. Prompts are real histories from
  the chitchat validation split (the oldest turns dropped until prompt + reply fit the
  model's window, so every side sees the same tokens); the rate is ``--load`` x the requests/s
  Parley sustains when all of them arrive at once (its capacity for this traffic). Peers
  serve as a plain server would: whatever waits, up to 64, as one batch. Replies end at
  end-of-turn, capped at 200 tokens. A model with random weights (a ``--checkpoint`` that
  does not export, measured on a same-shape export) never says end-of-turn, so for one each
  reply ends where the human reply it stands for ended (in tokens, capped), end-of-turn banned, on
  every side alike; the JSON says which (``reply_lengths``: ``model`` or ``data``).

Per side: tokens/s (completion tokens over first arrival to last token), time to first token
and inter-token latency (p50/p99, ms; a token's time is when the side hands it back:
Parley's step returns it, transformers' stopping criterion or CT2's callback sees it). Parley
streams every token here (``stream_interval_ms = 0``; a deployment's default is 100 ms, which
costs it less).
``best_peer_ratio_a`` / ``_b`` are Parley's tokens/s over the best peer's; ``decode_mfu`` is
Parley's model FLOPs per generated token x tokens/s in (a) over a matmul peak measured in this
run in the dtype it serves in. Each side runs ``--repeats`` times, interleaved, and keeps its
best run (tokens/s): other work on a shared machine only slows a run down.

Usage: ``python -m bench.peers [--quick] [--threads N] [--checkpoint DIR] [--note TEXT]``.
Prints one JSON object and writes it to ``bench/results/peers-<device>.json`` (``--quick``:
``peers-quick.json``; ``--out`` for another folder). Needs the bench extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# `python bench/X.py` puts bench/ first on sys.path; the repository root belongs there, so
# `bench`, `bot` and `engine` import as they do under `python -m bench.X`.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch
from prometheus_client import CollectorRegistry
from torch import nn

from bench.peer_sides import (
    MAX_BATCH,
    TEMPERATURE,
    CTranslate2Side,
    Request,
    StaticBatcher,
    Trace,
    TransformersSide,
    convert_ct2,
    serve_static,
)
from bench.report import RESULTS, save_result
from bot.errors import ModelError
from bot.queue import Delivery
from bot.settings import EngineSettings, SamplingSettings
from bot.wire import ChatRequest, Sampling, Turn
from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.data.formatting import format_prompt
from engine.export import check_llama_layout, export_hf
from engine.models import build_model
from engine.serve.metrics import EngineMetrics
from engine.serve.scheduler import Scheduler
from engine.serve.work import Failed, Finished, Progress, Work
from engine.service import choose_decode_dtype, weights_dtype
from engine.train.data import load_texts

log = logging.getLogger("bench.peers")

STARTER = Path(__file__).resolve().parents[1] / "engine" / "starter"
_TURN = re.compile(r"<\|(user|bot)\|>(.*?)<\|eot\|>", re.S)


@dataclass(frozen=True)
class Sizes:
    a_sequences: int = 64
    a_new_tokens: int = 128
    b_conversations: int = 256
    b_cap: int = 200
    repeats: int = 3
    peak_s: float = 2.0


QUICK = Sizes(a_sequences=8, a_new_tokens=16, b_conversations=16, b_cap=24, repeats=1, peak_s=0.3)


# ----------------------------------------------------------------------------- workloads


def chat_requests(ckpt: Checkpoint, n: int, cap: int, seed: int) -> list[Request]:
    """``n`` (history, message, reply) triples from the chitchat validation split, each
    history cut (oldest turns first) so the prompt and a ``cap``-token reply fit the window."""
    tok, window = ckpt.tokenizer, ckpt.config.block_size
    budget = window - cap
    candidates = []
    for text in load_texts(["chitchat"]).val:
        turns = [(role, body) for role, body in _TURN.findall(text)]
        candidates += [(turns, i) for i in range(0, len(turns) - 1, 2)]  # a user turn + reply
    rng = random.Random(seed)
    rng.shuffle(candidates)
    requests: list[Request] = []
    for turns, i in candidates:
        history = turns[:i]
        while True:
            prompt = tok.encode(format_prompt(history, turns[i][1]))
            if len(prompt) <= budget or not history:
                break
            history = history[2:]  # a user turn and its reply, so roles keep alternating
        if len(prompt) > budget:
            continue
        reply = min(cap, len(tok.encode(turns[i + 1][1])))
        hist = tuple(Turn(role, body) for role, body in history)  # type: ignore[arg-type]
        requests.append(Request(hist, turns[i][1], prompt, reply))
        if len(requests) == n:
            return requests
    raise SystemExit(f"the validation split has only {len(requests)} usable exchanges")


def poisson(requests: Sequence[Request], rate_per_s: float, seed: int) -> list[Request]:
    rng = random.Random(seed)
    t, timed = 0.0, []
    for r in requests:
        timed.append(dataclasses.replace(r, arrival_s=t))
        t += rng.expovariate(rate_per_s)
    return timed


# ------------------------------------------------------------------------------ parley


class ParleySide:
    """Parley's scheduler driven directly: submit what has arrived, step, collect."""

    def __init__(self, ckpt: Checkpoint, decode_dtype: torch.dtype | None) -> None:
        self.ckpt, self.decode_dtype = ckpt, decode_dtype
        self.dtype = str(decode_dtype or ckpt.model.dtype).removeprefix("torch.")
        self._schedulers: dict[bool, Scheduler] = {}

    def scheduler(self, ignore_eot: bool) -> Scheduler:
        if ignore_eot not in self._schedulers:
            self._schedulers[ignore_eot] = Scheduler(
                self.ckpt,
                EngineSettings(max_batch=MAX_BATCH, stream_interval_ms=0),
                SamplingSettings(),
                self.ckpt.model.device,
                metrics=EngineMetrics("bench", CollectorRegistry()),
                decode_dtype=self.decode_dtype,
                ignore_eot=ignore_eot,
            )
        return self._schedulers[ignore_eot]

    def serve(self, requests: Sequence[Request], limits: Sequence[int], eot: bool) -> list[Trace]:
        s = self.scheduler(ignore_eot=not eot)
        traces = [Trace(r.arrival_s) for r in requests]
        by_id: dict[str, int] = {}
        todo, in_flight, t0 = 0, 0, time.perf_counter()
        while todo < len(requests) or in_flight:
            now = time.perf_counter() - t0
            while todo < len(requests) and requests[todo].arrival_s <= now:
                work = _work(requests[todo], limits[todo])
                by_id[work.request.id] = todo
                s.submit(work)
                todo, in_flight = todo + 1, in_flight + 1
            if not in_flight:
                time.sleep(requests[todo].arrival_s - now)  # idle until the next arrival
                continue
            outputs = s.step_once()
            t = time.perf_counter() - t0
            for out in outputs:
                if isinstance(out, Progress | Finished):
                    trace = traces[by_id[out.work.request.id]]
                    trace.times.append(t)
                if isinstance(out, Finished):
                    trace.tokens = out.reply.completion_tokens
                    in_flight -= 1
                    if out.reply.prompt_tokens != len(requests[by_id[out.work.request.id]].prompt):
                        raise SystemExit("Parley was fed another prompt than the peers")
                elif isinstance(out, Failed):
                    raise SystemExit(f"Parley failed a request: {out.failure} {out.detail}")
        return traces


def _work(r: Request, limit: int) -> Work:
    sampling = Sampling(
        temperature=TEMPERATURE, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=limit
    )
    conv = uuid.uuid4().hex  # never a cache hit: every side computes every prompt
    request = ChatRequest(
        id=conv, conversation=conv, reply_to="bench", text=r.text, sampling=sampling
    )
    return Work(Delivery(0, "0-0", request), request, r.history, None, time.monotonic())


# ----------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def summarize(traces: Sequence[Trace], dtype: str) -> dict[str, Any]:
    """tokens/s and p50/p99 TTFT and inter-token latency (tokens that came back together, in
    one step, count as one delivery: the gap between them is not a latency anyone sees)."""
    start = min(t.arrival_s for t in traces)
    end = max(t.times[-1] for t in traces if t.times)
    tokens = sum(t.tokens for t in traces)
    ttft = [(t.times[0] - t.arrival_s) * 1000 for t in traces if t.times]
    itl = []
    for t in traces:
        moments = sorted(set(t.times))
        itl += [(b - a) * 1000 for a, b in itertools.pairwise(moments)]
    return {
        "tokens_per_s": round(tokens / (end - start), 1),
        "ttft_p50_ms": round(percentile(ttft, 50), 2),
        "ttft_p99_ms": round(percentile(ttft, 99), 2),
        "itl_p50_ms": round(percentile(itl, 50), 2),
        "itl_p99_ms": round(percentile(itl, 99), 2),
        "tokens": tokens,
        "requests": len(traces),
        "wall_s": round(end - start, 3),
        "dtype": dtype,
    }


def decode_flops(model: nn.Module, config: Any, prompts: Sequence[int], new: Sequence[int]) -> int:
    """Forward FLOPs of generating ``new[i]`` tokens after a ``prompts[i]``-token prompt:
    2 per weight of every matmul (the tied head included) plus 4 x layers x width per
    attended position (q.k and p.v), at each token's own context length."""
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attend = 4 * config.n_layer * config.n_embd
    total = 0
    for p, n in zip(prompts, new, strict=True):
        positions = n * p + n * (n + 1) // 2  # contexts p+1 .. p+n
        total += 2 * matmul * n + attend * positions
    return total


def matmul_peak(dtype: torch.dtype, device: str, seconds: float, n: int = 2048) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        done += 1
    sync()
    return 2 * n**3 * done / (time.perf_counter() - started)


# -------------------------------------------------------------------------------- setup


def bench_model(path: Path, work: Path) -> tuple[Checkpoint, str]:
    """The checkpoint if it has Llama's layout, else a seeded random one of its shape and
    tokenizer in that layout; and which of the two (``weights``)."""
    ckpt = load_checkpoint(path)
    try:
        check_llama_layout(ckpt.config)
        return ckpt, "trained"
    except ModelError as e:
        log.warning("%s; benchmarking random weights of its shape instead", e)
    torch.manual_seed(0)
    config = dataclasses.replace(ckpt.config, mlp="swiglu", n_mlp=0)
    model = build_model(config)
    saved = save_checkpoint(
        work / "model", model, ckpt.tokenizer, preset=ckpt.preset, metrics={}, provenance={}
    )
    return load_checkpoint(saved), "random"


def build_sides(
    ckpt: Checkpoint, hf_dir: Path, ct2_dir: Path, device: str, threads: int, quick: bool
) -> tuple[ParleySide, list[StaticBatcher]]:
    if device == "cuda":
        served = load_checkpoint(
            ckpt.path, device="cuda", dtype=weights_dtype("auto", torch.device("cuda"))
        )
        parley = ParleySide(served, None)
        return parley, [
            TransformersSide(hf_dir, ckpt, served.model.dtype, "cuda"),
            CTranslate2Side(ct2_dir, ckpt, "bfloat16", "cuda", threads),
        ]
    # What `engine.dtype = "auto"` serves in (it times a decode step in each dtype); a quick
    # run skips the timing and serves the weights' float32.
    engine = EngineSettings(max_batch=MAX_BATCH)
    decode = None if quick else choose_decode_dtype(engine, ckpt.model, torch.device("cpu"))
    parley = ParleySide(ckpt, decode)
    peers: list[StaticBatcher] = [
        TransformersSide(hf_dir, ckpt, torch.float32, "cpu"),
        CTranslate2Side(ct2_dir, ckpt, "float32", "cpu", threads),
    ]
    if not quick:
        peers.append(CTranslate2Side(ct2_dir, ckpt, "int8", "cpu", threads))
    return parley, peers


# --------------------------------------------------------------------------------- run


def run_device(
    ckpt: Checkpoint, weights: str, dirs: tuple[Path, Path], device: str, args: argparse.Namespace
) -> dict[str, Any]:
    sizes = QUICK if args.quick else Sizes()
    repeats = args.repeats or sizes.repeats
    parley, peers = build_sides(ckpt, *dirs, device, args.threads, args.quick)
    eot = weights == "trained"
    chats = chat_requests(ckpt, sizes.b_conversations, sizes.b_cap, seed=0)
    a_reqs = [dataclasses.replace(r, arrival_s=0.0) for r in chats[: sizes.a_sequences]]
    while len(a_reqs) < sizes.a_sequences:  # fewer chats than sequences: reuse prompts
        a_reqs.append(a_reqs[len(a_reqs) % len(chats)])
    a_limits = [sizes.a_new_tokens] * len(a_reqs)
    b_limits = [r.reply_tokens if not eot else sizes.b_cap for r in chats]

    def run_a(side: ParleySide | StaticBatcher) -> list[Trace]:
        if isinstance(side, ParleySide):
            return side.serve(a_reqs, a_limits, eot=False)
        return serve_static(side, a_reqs, a_limits, eot=False)

    # Warm up every side, and calibrate the arrival rate on Parley's capacity for (b)'s
    # requests: all of them at once, so it always has as many as it can batch.
    for side in (parley, *peers):
        run_a(side)
    burst = [dataclasses.replace(r, arrival_s=0.0) for r in chats]
    capacity = summarize(parley.serve(burst, b_limits, eot), parley.dtype)["tokens_per_s"]
    mean_reply = sum(r.reply_tokens for r in chats) / len(chats)
    rate = args.rate or args.load * capacity / mean_reply
    b_reqs = poisson(chats, rate, seed=1)

    def run_b(side: ParleySide | StaticBatcher) -> list[Trace]:
        if isinstance(side, ParleySide):
            return side.serve(b_reqs, b_limits, eot)
        return serve_static(side, b_reqs, b_limits, eot)

    names = {id(parley): "parley", **{id(p): p.name for p in peers}}
    suffix = "" if device == "cpu" else f"-{device}"
    best: dict[str, dict[str, dict[str, Any]]] = {"a": {}, "b": {}}
    parley_a_traces: list[Trace] = []
    for _ in range(repeats):
        for side in (parley, *peers):
            name = names[id(side)] + suffix
            for key, run in (("a", run_a), ("b", run_b)):
                traces = run(side)
                got = summarize(traces, side.dtype)
                if name not in best[key] or got["tokens_per_s"] > best[key][name]["tokens_per_s"]:
                    best[key][name] = got
                    if side is parley and key == "a":
                        parley_a_traces = traces
    return {
        "workload_a": best["a"],
        "workload_b": best["b"],
        "parley": parley,
        "parley_a_traces": parley_a_traces,
        "a_requests": a_reqs,
        "workload": {
            "a": {"sequences": len(a_reqs), "new_tokens": sizes.a_new_tokens},
            "b": {
                "conversations": len(chats),
                "reply_cap": sizes.b_cap,
                "mean_reply_tokens": round(mean_reply, 1),
                "mean_prompt_tokens": round(sum(len(r.prompt) for r in chats) / len(chats), 1),
                "arrival_rate_per_s": round(rate, 1),
                "load": None if args.rate else args.load,
                "capacity_tokens_per_s": capacity,
                "rate_from": "--rate" if args.rate else "load x capacity / mean reply",
            },
            "repeats": repeats,
        },
    }


def figures_for(
    ckpt: Checkpoint, got: dict[str, Any], device: str, peak_s: float
) -> dict[str, Any]:
    suffix = "" if device == "cpu" else f"_{device}"
    parley_name = "parley" + ("" if device == "cpu" else f"-{device}")
    out: dict[str, Any] = {}
    for key in ("a", "b"):
        sides = got[f"workload_{key}"]
        peers = {n: v for n, v in sides.items() if n != parley_name}
        best = max(peers, key=lambda n: peers[n]["tokens_per_s"])
        out[f"best_peer_ratio_{key}{suffix}"] = round(
            sides[parley_name]["tokens_per_s"] / peers[best]["tokens_per_s"], 3
        )
        out[f"best_peer_{key}{suffix}"] = best
    b = got["workload_b"]
    out[f"parley_p99_ttft_below_every_peer_b{suffix}"] = all(
        b[parley_name]["ttft_p99_ms"] < v["ttft_p99_ms"] for n, v in b.items() if n != parley_name
    )
    parley: ParleySide = got["parley"]
    served = torch.bfloat16 if parley.dtype == "bfloat16" else parley.ckpt.model.dtype
    peak = matmul_peak(served, device, peak_s)
    traces: list[Trace] = got["parley_a_traces"]
    prompts = [len(r.prompt) for r in got["a_requests"]]
    flops = decode_flops(parley.ckpt.model, ckpt.config, prompts, [t.tokens for t in traces])
    tokens = sum(t.tokens for t in traces)
    tps = got["workload_a"][parley_name]["tokens_per_s"]
    out[f"decode_mfu{suffix}"] = round(flops / tokens * tps / peak, 4)
    out[f"decode_mfu_detail{suffix}"] = {
        "flops_per_token": round(flops / tokens),
        "tokens_per_s": tps,
        "peak_flops": round(peak),
        "peak_dtype": str(served).removeprefix("torch."),
        "rows": len(prompts),
        "note": "workload (a), prefill time included in the time",
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--checkpoint", type=Path, default=STARTER)
    parser.add_argument("--load", type=float, default=0.9, help="(b) rate vs Parley's capacity")
    parser.add_argument("--rate", type=float, default=0.0, help="(b) arrivals/s (overrides --load)")
    parser.add_argument("--repeats", type=int, default=0, help="runs per side (best kept)")
    parser.add_argument("--note", action="append", default=[], help="a note for the JSON")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    import ctranslate2
    import transformers

    ctranslate2.set_random_seed(0)
    torch.manual_seed(0)
    started, load_start = time.perf_counter(), os.getloadavg()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result: dict[str, Any] = {"quick": args.quick, "threads": args.threads}
    result["sampling"] = {"temperature": TEMPERATURE, "top_k": 0, "top_p": 1.0}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, weights = bench_model(args.checkpoint, work)
        dirs = (export_hf(ckpt, work / "hf"), convert_ct2(work / "hf", work / "ct2"))
        result["model"] = {
            "checkpoint": str(args.checkpoint),
            "weights": weights,
            "config": ckpt.config.to_dict(),
            "params": ckpt.model.num_params(),
        }
        result["reply_lengths"] = "model" if weights == "trained" else "data"
        for device in devices:
            got = run_device(ckpt, weights, dirs, device, args)
            suffix = "" if device == "cpu" else f"_{device}"
            result[f"workload_a{suffix}"] = got["workload_a"]
            result[f"workload_b{suffix}"] = got["workload_b"]
            result[f"workload{suffix}"] = got["workload"]
            result |= figures_for(ckpt, got, device, (QUICK if args.quick else Sizes()).peak_s)
    result["versions"] = {
        "transformers": transformers.__version__,
        "ctranslate2": ctranslate2.__version__,
    }
    result["load_average"] = {"start": load_start, "end": os.getloadavg()}
    result["notes"] = args.note
    result["wall_s"] = round(time.perf_counter() - started, 1)
    name = "peers-quick" if args.quick else f"peers-{devices[-1]}"
    path = save_result(name, result, args.out)
    json.dump(json.loads(path.read_text()), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
