"""Training benchmark: Parley's trainer against a plain loop, MFU, and quality at equal time.

    python bench/train.py                  # 600 s per model: ~45 minutes on a 2-core CPU
    python bench/train.py --budget-s 120   # a quicker look

Prints one JSON object:

* ``throughput``: tokens/s and chars/s of Parley's training step and of a reference loop
  (nanoGPT style: the same model and batch, eager fp32, plain for-loop AdamW, an eager
  cross-entropy) on the default preset. The two alternate in short rounds, so a machine
  shared with other work slows both alike; ``throughput_ratio`` = Parley / reference.
* ``mfu``: Parley's model FLOPs per second over the peak of a large matmul measured in this
  run, in the dtype Parley computes in (bf16 where the CPU has it); ``mfu_vs_fp32_peak`` and
  ``reference_mfu`` are against the fp32 peak.
* ``models``: the seed GRU, the default GRU, and the default Transformer with a character
  and with a BPE tokenizer, each trained by ``parley train``'s code for the same wall-clock
  budget on chitchat and scored on its validation split (bits/char, word validity, ...);
  and the half-width ``gpt-small``, the runner-up when the default was chosen.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/train.py` puts bench/ first on sys.path; the repository root belongs there
# (so `engine` and `bench` import, and no sibling script shadows a module).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import dataclasses
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from engine.models import LanguageModel, build_model, preset_config
from engine.tokenizer import Tokenizer
from engine.train.cli import RunOptions, resolve_preset, run_training, train_config
from engine.train.data import (
    encode_split,
    fit_tokenizer,
    load_texts,
    random_windows,
    step_generator,
)
from engine.train.ddp import ThreadTuner
from engine.train.evaluate import autocast_dtype
from engine.train.schedule import StepRunner, make_optimizer, recipe_for

log = logging.getLogger("bench.train")

MODELS: dict[str, tuple[str, str]] = {
    # name -> (preset, tokenizer)
    "seed-gru-char": ("seed", "char"),
    "gru-char": ("gru", "char"),
    "gpt-char": ("default", "char"),
    "gpt-bpe": ("default", "bpe"),
    "gpt-small-bpe": ("gpt-small", "bpe"),
}


# ------------------------------------------------------------------------------- peak


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of a large square matmul in ``dtype``: the best this machine does."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - started)


# --------------------------------------------------------------------------- throughput


def reference_step(model: LanguageModel) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """nanoGPT's loop, plainly: eager fp32 forward, cross-entropy, backward, clip, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, foreach=False)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        logits, _ = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    return step


def parley_step(
    model: LanguageModel, preset: str = "default", compile_model: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The step ``parley train`` runs for ``preset``: the trainer's own StepRunner with its
    defaults (the model through ``torch.compile`` as well, as ``--compile`` does)."""
    cfg = train_config(preset)
    runner = StepRunner(
        torch.compile(model) if compile_model else model,
        model,
        make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, beta2=cfg.beta2),
        amp_dtype=autocast_dtype(model.device, cfg.precision),
        grad_clip=cfg.grad_clip,
        compile_loss=cfg.compile_loss,
    )
    return lambda x, y: runner([(x, y)], cfg.lr).item()


@dataclass
class Loop:
    """One training loop under measurement, and what it has done so far."""

    step: Callable[[torch.Tensor, torch.Tensor], None]
    model: LanguageModel
    tuner: ThreadTuner | None = None
    tokens: int = 0
    time_s: float = 0.0
    steps: int = 0
    warmup_s: float = 0.0

    def warm_up(self, tokens: torch.Tensor, batch: int, threads: int, steps: int = 2) -> None:
        """Run ``steps`` steps (compilation, kernel selection) that the figures leave out."""
        started = time.perf_counter()
        for _ in range(steps):
            self.run_for(0.0, tokens, batch, threads)
        self.warmup_s, self.tokens, self.time_s = time.perf_counter() - started, 0, 0.0

    def run_for(self, seconds: float, tokens: torch.Tensor, batch: int, threads: int) -> None:
        T, device = self.model.config.block_size, self.model.device
        started = time.perf_counter()
        while True:  # at least one step
            x, y = random_windows(tokens, batch, T, step_generator(1, self.steps))
            n = self.tuner.threads_for(self.steps) if self.tuner else threads
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            self.step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            if self.tuner:
                self.tuner.record(self.steps, n, time.perf_counter() - t0)
            self.tokens += x.numel()
            self.steps += 1
            if time.perf_counter() - started >= seconds:
                break
        self.time_s += time.perf_counter() - started


def measure_throughput(
    tokens: torch.Tensor, vocab_size: int, chars_per_token: float, seconds: float, threads: int
) -> dict[str, Any]:
    """Parley's step vs the reference on the default preset, alternating in short rounds.

    ``parley`` is the trainer as it runs (threads tuned by timing, as ``parley train`` does
    under a budget); ``parley_fixed_threads`` is the same step at the reference's thread
    count ``threads``, which isolates the kernels' share of the speed-up.
    """
    preset, cfg = resolve_preset("default"), train_config("default")
    batch, rounds, machine_threads = cfg.batch_size * cfg.grad_accum, 10, torch.get_num_threads()
    makers = {
        "reference": reference_step,
        "parley_fixed_threads": parley_step,
        "parley": parley_step,
    }
    loops = {}
    for name, make in makers.items():
        torch.manual_seed(0)
        model = build_model(preset_config(preset, vocab_size)).train()
        tuner = ThreadTuner(machine_threads, every=60) if name == "parley" else None
        loop = Loop(make(model), model, tuner)
        loop.warm_up(tokens, batch, threads)  # compiles the loss
        loops[name] = loop
    for _ in range(rounds):
        for loop in loops.values():
            loop.run_for(seconds / rounds, tokens, batch, threads)
    torch.set_num_threads(machine_threads)
    report: dict[str, Any] = {
        "preset": preset,
        "batch": batch,
        "block_size": model.config.block_size,
    }
    for name, loop in loops.items():
        tps = loop.tokens / loop.time_s
        report[name] = {
            "tokens_per_s": tps,
            "chars_per_s": tps * chars_per_token,
            "flops_per_s": tps * loop.model.flops_per_token(),
            "steps": loop.steps,
            "warmup_s": loop.warmup_s,
        }
    return report


# ------------------------------------------------------------------------------ quality


def train_one(
    name: str, preset: str, tokenizer: str, budget_s: float, work: Path
) -> dict[str, Any]:
    resolved = resolve_preset(preset)
    recipe = recipe_for(resolved, preset_config(resolved, 1).arch)
    opts = RunOptions(
        preset=resolved,
        tokenizer=tokenizer,
        vocab_size=recipe.vocab_size or 4096,
        out=work / name,
        cache_dir=work / "cache",
        overwrite=True,
    )
    cfg = dataclasses.replace(
        train_config(resolved), budget_s=budget_s, progress_bar=False, patience=0
    )
    m = run_training(opts, cfg).metrics
    keys = ("val_bpc", "val_loss", "word_validity", "distinct_2", "steps", "train_tokens",
            "tokens_per_s", "chars_per_s", "params", "wall_time_s", "stopped")  # fmt: skip
    return {
        "name": name,
        "preset": resolved,
        "tokenizer": tokenizer,
        **{k: m[k] for k in keys},
        "samples": m["samples"][:4],
    }


# --------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=600.0, help="Training time per model.")
    parser.add_argument("--throughput-s", type=float, default=60.0, help="Per loop.")
    parser.add_argument("--models", default=",".join(MODELS), help="Comma-separated subset.")
    parser.add_argument("--work", type=Path, default=None, help="Where runs go (default: temp).")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="Threads of the reference and parley_fixed_threads loops (default: torch's).",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="parley-bench-"))

    result: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": "cpu",
        },
        "budget_s": args.budget_s,
    }
    if not args.skip_throughput:
        result.update(throughput_section(work, args.throughput_s, args.threads))
        print(json.dumps({k: v for k, v in result.items() if k != "machine"}), file=sys.stderr)
    result["models"] = []
    for name in filter(None, args.models.split(",")):
        preset, tokenizer = MODELS[name]
        log.info("training %s for %.0f s", name, args.budget_s)
        result["models"].append(train_one(name, preset, tokenizer, args.budget_s, work))
        print(json.dumps(result["models"][-1]), file=sys.stderr, flush=True)
    best = min(result["models"], key=lambda m: m["val_bpc"], default=None)
    result["best"] = best["name"] if best else None
    print(json.dumps(result, indent=2))


def throughput_section(work: Path, seconds: float, threads: int) -> dict[str, Any]:
    texts = load_texts(["chitchat"])
    recipe = recipe_for(resolve_preset("default"), "gpt")
    tokenizer: Tokenizer = fit_tokenizer(recipe.tokenizer, texts.train, recipe.vocab_size or 4096)
    split = encode_split(tokenizer, texts.train, work / "cache")
    tokens = torch.from_numpy(split.tokens)
    peak_fp32 = matmul_peak(torch.float32)
    peak_bf16 = matmul_peak(torch.bfloat16)
    chars_per_token = split.n_chars / len(split)
    tp = measure_throughput(tokens, tokenizer.vocab_size, chars_per_token, seconds, threads)
    # The peak is measured again after the loops, and the higher kept: a busy neighbour
    # during one measurement must not inflate the MFU.
    peak_fp32 = max(peak_fp32, matmul_peak(torch.float32))
    peak_bf16 = max(peak_bf16, matmul_peak(torch.bfloat16))
    amp = autocast_dtype(torch.device("cpu"), "auto")
    parley_peak = peak_bf16 if amp == torch.bfloat16 else peak_fp32
    return {
        "peak_flops": {"fp32": peak_fp32, "bf16": peak_bf16},
        "throughput": tp,
        "throughput_ratio": tp["parley"]["tokens_per_s"] / tp["reference"]["tokens_per_s"],
        "throughput_ratio_fixed_threads": (
            tp["parley_fixed_threads"]["tokens_per_s"] / tp["reference"]["tokens_per_s"]
        ),
        "mfu": tp["parley"]["flops_per_s"] / parley_peak,
        "mfu_vs_fp32_peak": tp["parley"]["flops_per_s"] / peak_fp32,
        "reference_mfu": tp["reference"]["flops_per_s"] / peak_fp32,
    }


if __name__ == "__main__":
    main()
