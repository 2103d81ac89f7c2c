"""GPU benchmark: the engine's batched, graph-replayed decode and the trainer on one CUDA device.

    python -m bench.gpu [--quick] [--seconds S]

Prints one JSON object; every ratio compares two measurements of this one run, on the same
GPU and model:

- ``engine.<preset>``: tokens/s of ``concurrency`` conversations through the scheduler
  (bf16 weights, as ``engine.dtype=auto`` loads them on a GPU) with CUDA graphs and without
  (``graphs_ratio``), over the one-request-at-a-time loop of bench.serving on the same bf16
  model on the same GPU (``throughput_ratio``): nanoGPT's ``generate`` for a GPT, the
  char-RNN loop for a GRU. Random weights, a character vocabulary, replies of a fixed length.
- ``followup``: time to first token of a follow-up with cached state over a recompute of a
  2,000-character history, on the GPU.
- ``train.<preset>``: tokens/s of ``parley train``'s step (bf16 autocast, fused AdamW,
  compiled loss; and with ``--compile``) over bench.train's nanoGPT-style reference step
  (eager fp32), alternating in rounds; MFU against a bf16 matmul measured in this run.

CI has no GPU; this runs where one is (see README, "GPU figures").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.baselines import char_rnn_loop, loop_tokens_per_s, nanogpt_generate
from bench.engine_runs import PLAIN, Sizes, bench_checkpoint, engine_tokens_per_s, scheduler_for
from bench.followup import followup_ttft_ms
from bench.train import Loop, matmul_peak, parley_step, reference_step
from engine.checkpoint import Checkpoint
from engine.models import LanguageModel, build_model, preset_config

log = logging.getLogger("bench.gpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak_cuda(n: int = 8192, repeats: int = 10) -> float:
    """bf16 FLOP/s of an n x n x n product on random data, timed with CUDA events."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (start.elapsed_time(end) / 1000)


def synced(measure: Callable[[], float]) -> Callable[[], float]:
    def run() -> float:
        sync()
        return measure()

    return run


def engine_section(
    ckpt: Checkpoint, new_tokens: int, concurrencies: list[int], baseline_requests: int
) -> dict[str, Any]:
    loop = char_rnn_loop if ckpt.config.arch == "gru" else nanogpt_generate
    out: dict[str, Any] = {"params": ckpt.model.num_params(), "new_tokens": new_tokens}
    base = synced(lambda: loop_tokens_per_s(loop, ckpt, baseline_requests, new_tokens))
    base()  # warm-up
    out["baseline_tokens_per_s"] = round(max(base(), base()), 1)
    for c in concurrencies:
        for graphs in (True, False):
            s = scheduler_for(ckpt, new_tokens, None, max_batch=c, cuda_graphs=graphs)
            run = synced(lambda s=s, c=c: engine_tokens_per_s(s, c, c, PLAIN))
            run()  # warm-up: kernel selection, (graphs were captured when it was built)
            tps = max(run(), run())
            key = f"c{c}_{'graphs' if graphs else 'eager'}_tokens_per_s"
            out[key] = round(tps)
            log.info("%s %s: %.0f tokens/s", ckpt.preset, key, tps)
        out[f"c{c}_throughput_ratio"] = round(
            out[f"c{c}_graphs_tokens_per_s"] / out["baseline_tokens_per_s"], 1
        )
        out[f"c{c}_graphs_ratio"] = round(
            out[f"c{c}_graphs_tokens_per_s"] / out[f"c{c}_eager_tokens_per_s"], 2
        )
    return out


def train_section(
    preset: str, batch: int, seconds: float, peak: float, device: torch.device
) -> dict[str, Any]:
    """bench/train.py's loops, on ``device``, alternating in rounds over random tokens."""
    vocab_size, threads = 8192, torch.get_num_threads()
    makers: dict[str, Callable[[LanguageModel], Callable[[torch.Tensor, torch.Tensor], None]]] = {
        "reference": reference_step,
        "parley": lambda m: parley_step(m, preset),
        "parley_compiled": lambda m: parley_step(m, preset, compile_model=True),
    }
    data = torch.randint(0, vocab_size, (2_000_000,), generator=torch.Generator().manual_seed(0))
    loops: dict[str, Loop] = {}
    out: dict[str, Any] = {"batch": batch}
    for name, make in makers.items():
        torch.manual_seed(0)
        model = build_model(preset_config(preset, vocab_size)).to(device).train()
        loops[name] = Loop(make(model), model)
        loops[name].warm_up(data, batch, threads, steps=3)  # compiles
        out[f"{name}_warmup_s"] = round(loops[name].warmup_s, 1)
    rounds = 4
    for _ in range(rounds):
        for loop in loops.values():
            loop.run_for(seconds / rounds, data, batch, threads)
    parley = loops["parley"].model
    out["params"] = parley.num_params()
    for name, loop in loops.items():
        tps = loop.tokens / loop.time_s
        out[f"{name}_tokens_per_s"] = round(tps)
        out[f"{name}_mfu"] = round(tps * parley.flops_per_token() / peak, 3)
    out["throughput_ratio"] = round(out["parley_tokens_per_s"] / out["reference_tokens_per_s"], 2)
    out["compiled_throughput_ratio"] = round(
        out["parley_compiled_tokens_per_s"] / out["reference_tokens_per_s"], 2
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    parser.add_argument("--seconds", type=float, default=40.0, help="training time per loop")
    parser.add_argument("--skip", nargs="*", default=[], choices=["engine", "ttft", "train"])
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run the code on the CPU (checks, no figures)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    if args.cpu_smoke:
        device, peak, name = "cpu", matmul_peak(torch.bfloat16, 512, 0.5), "none (CPU smoke run)"
    elif torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # as torch's default; said, not assumed
        device, peak = "cuda", matmul_peak_cuda(4096 if args.quick else 8192)
        name = torch.cuda.get_device_name()
    else:
        print(json.dumps({"error": "no CUDA device (--cpu-smoke runs the code on the CPU)"}))
        return 1
    result: dict[str, Any] = {
        "gpu": name,
        "torch": torch.__version__,
        "bf16_matmul_peak_tflops": round(peak / 1e12, 1),
        "quick": args.quick,
    }
    started = time.perf_counter()
    concurrencies = [16] if args.quick else [64, 256]
    new_tokens = 32 if args.quick else 256
    failed = False

    def attempt(section: dict[str, Any], key: str, measure: Callable[[], dict[str, Any]]) -> None:
        """One figure; a failure is recorded (and the run goes on to the next)."""
        nonlocal failed
        try:
            section[key] = measure()
        except Exception as e:
            log.exception("%s failed", key)
            section[key], failed = {"error": f"{type(e).__name__}: {e}"}, True
        print(json.dumps({key: section[key]}), file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:

        def load(preset: str) -> Checkpoint:
            return bench_checkpoint(Path(tmp), preset, device, torch.bfloat16)

        def followup(preset: str) -> dict[str, Any]:
            cached, fresh = followup_ttft_ms(
                load(preset), Sizes(ttft_repeats=1 if args.quick else 3)
            )
            return {
                "ratio": round(cached / fresh, 3),
                "cached_ms": round(cached, 2),
                "recompute_ms": round(fresh, 2),
            }

        if "engine" not in args.skip:
            result["engine"] = {}
            presets = (("gru", 4), ("gpt", 2), *((("gpt-base", 1),) if not args.quick else ()))
            for preset, base_n in presets:
                attempt(
                    result["engine"],
                    preset,
                    lambda p=preset, n=base_n: engine_section(
                        load(p), new_tokens, concurrencies, n
                    ),
                )
        if "ttft" not in args.skip:
            result["followup"] = {}
            for preset in ("gru", "gpt"):
                attempt(result["followup"], preset, lambda p=preset: followup(p))
        if "train" not in args.skip:
            seconds = 8.0 if args.quick else args.seconds
            preset = "gpt-small" if args.cpu_smoke else "gpt-base"
            result["train"] = {}
            attempt(
                result["train"],
                preset,
                lambda: train_section(preset, 16, seconds, peak, torch.device(device)),
            )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
