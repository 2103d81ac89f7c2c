"""The trainer: AdamW on random windows, evaluation, the best checkpoint.

One optimizer step is ``grad_accum`` micro-batches of random windows (bf16 autocast where the
hardware has fast bf16 matmuls, see :func:`engine.train.evaluate.autocast_dtype`), gradient
clipping, and a fused AdamW update at the rate the schedule gives for this step and time.
Every ``eval_interval`` steps the model is scored on a fixed subset of the validation split;
an improvement is saved as the checkpoint in ``out`` (through the one checkpoint writer the
engine reads), no improvement for ``patience`` evaluations stops the run. The run ends at
``max_steps``, at the wall-clock budget, or on early stopping; then the best weights are
scored on the whole validation split and sampled, and that report is the checkpoint's
``metrics.json``.

Resuming: every evaluation also saves the run's state (:mod:`engine.train.state`); started
again with the same ``out``, the trainer continues from there. Batches and dropout masks are
drawn from generators seeded by (seed, step, rank), so no RNG state needs saving and a resumed
run draws what an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bot.errors import ModelError
from engine.checkpoint import load_checkpoint
from engine.models import LanguageModel
from engine.tokenizer import Tokenizer
from engine.train import ddp
from engine.train.data import TrainData, random_windows, step_generator, step_seed
from engine.train.evaluate import autocast_dtype, evaluate_loss, evaluate_model
from engine.train.plot import plot_losses
from engine.train.schedule import Schedule, StepRunner, make_optimizer
from engine.train.state import (
    WEIGHTS_FILE,
    Progress,
    find_state,
    load_state,
    remove_state,
    save_checkpoint_beside_state,
    save_state,
)

log = logging.getLogger(__name__)

LOSS_PLOT = "loss.png"
_CURVE_EVERY = 10
"""Steps averaged into one point of the train-loss curve."""
_MIN_IMPROVEMENT = 1e-4
"""Nats/token by which validation loss must drop to count as better (patience, best model)."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    max_steps: int | None = None
    budget_s: float | None = 600.0
    """Wall-clock seconds of training (steps, evaluations, compilation), not data loading."""
    batch_size: int = 32
    """Windows per micro-batch (per rank)."""
    grad_accum: int = 1
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_windows: int = 64
    """Validation windows scored at each periodic evaluation (the final one scores all)."""
    samples_per_prompt: int = 4
    """Replies sampled per fixed prompt in the final evaluation (for word validity)."""
    patience: int = 5
    """Evaluations without improvement before stopping early; 0 = never."""
    seed: int = 1337
    precision: str = "auto"
    threads: int | None = None
    """CPU threads per process. None: under a wall-clock budget, tune the count by timing
    steps (see ``ThreadTuner``); with a step limit alone, torch's default, so the run is
    reproducible bit for bit (the thread count changes float rounding)."""
    compile: bool = False
    """torch.compile the whole model (pays on GPUs; on a CPU only the loss is compiled)."""
    compile_loss: bool = True
    save_dtype: str = "fp32"
    """Dtype of the checkpoint's weights: fp32, or bf16/fp16 for a smaller file."""
    progress_bar: bool = True


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    metrics: dict[str, Any]
    """The final report (rank 0; empty on the other ranks)."""
    model: LanguageModel
    """The trained model holding the best weights, on every rank."""


# ------------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(
        self,
        model: LanguageModel,
        tokenizer: Tokenizer,
        data: TrainData,
        cfg: TrainConfig,
        out: Path,
        *,
        preset: str,
        provenance: dict[str, Any],
        world: ddp.World | None = None,
        on_step: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        extra_files: Sequence[Path] = (),
    ) -> None:
        self.world = world or ddp.World(0, 1, model.device)
        self.model = model.to(self.world.device)
        self.tokenizer, self.data, self.cfg, self.out = tokenizer, data, cfg, Path(out)
        self.preset, self.provenance, self.on_step = preset, provenance, on_step
        self.extra_files = tuple(extra_files)
        """Files every saved checkpoint carries (its remembered replies)."""
        self.clock = clock
        """Seconds, for the wall-clock budget (``time.perf_counter``; tests pass their own)."""
        self.amp_dtype = autocast_dtype(self.world.device, cfg.precision)
        self.optimizer = make_optimizer(
            self.model, lr=cfg.lr, weight_decay=cfg.weight_decay, beta2=cfg.beta2
        )
        self.schedule = Schedule(
            cfg.lr, cfg.lr * cfg.min_lr_ratio, cfg.warmup_steps, cfg.max_steps, cfg.budget_s
        )
        self.progress = Progress()
        self.best_weights: dict[str, Tensor] | None = None
        self.train_tokens = torch.from_numpy(data.train.tokens)
        self.threads = self._thread_tuner()
        self._steps_here = 0
        module = ddp.wrap(self.model, self.world)
        if cfg.compile:
            module = torch.compile(module)  # type: ignore[assignment]
        self.step_runner = StepRunner(
            module,
            self.model,
            self.optimizer,
            amp_dtype=self.amp_dtype,
            grad_clip=cfg.grad_clip,
            distributed=self.world.distributed,
            compile_loss=cfg.compile_loss,
        )

    def _thread_tuner(self) -> ddp.ThreadTuner | None:
        if self.world.device.type != "cpu":
            return None
        if self.cfg.threads is not None:
            torch.set_num_threads(self.cfg.threads)
            return None
        if self.cfg.budget_s is None:
            return None  # a step-bounded run stays reproducible: keep torch's default
        return ddp.ThreadTuner(torch.get_num_threads())

    @property
    def tokens_per_step(self) -> int:
        cfg = self.cfg
        return (
            cfg.batch_size * self.model.config.block_size * cfg.grad_accum * self.world.world_size
        )

    # -------------------------------------------------------------------------- the loop

    def run(self) -> TrainResult:
        """Train until done, then evaluate and save the best model; returns its metrics."""
        state = find_state(self.out)
        if state is not None:
            self.progress = load_state(state, self.model, self.optimizer, self.world.device)
            log.info("resuming from %s at step %d", state, self.progress.step)
        self.model.train()
        started = self.clock() - self.progress.elapsed_s
        bar = self._bar()
        try:
            with interrupts_between_steps() as interrupted:
                while not self.progress.stopped:
                    if interrupted():
                        self._save_on_interrupt()
                    elapsed = ddp.broadcast_floats([self.clock() - started], self.world)[0]
                    self.progress.elapsed_s = elapsed
                    if self.schedule.done(self.progress.step, elapsed):
                        self.progress.stopped = "max_steps" if self._hit_max_steps() else "budget"
                        break
                    self._train_step(elapsed, bar)
                    if self.progress.step % self.cfg.eval_interval == 0:
                        self._evaluate_and_save()
        finally:
            if bar is not None:
                bar.close()
        return self._finish()

    def _save_on_interrupt(self) -> None:
        if self.world.is_main:
            self._save_state()
            log.warning("interrupted at step %d; state saved in %s", self.progress.step, self.out)
        raise KeyboardInterrupt

    def _hit_max_steps(self) -> bool:
        return self.cfg.max_steps is not None and self.progress.step >= self.cfg.max_steps

    def _train_step(self, elapsed: float, bar: tqdm | None) -> None:
        p, cfg = self.progress, self.cfg
        lr = self.schedule.learning_rate(p.step, elapsed)
        threads = self.threads.threads_for(self._steps_here) if self.threads else 0
        t0 = time.perf_counter()
        batches = list(self._micro_batches(p.step))
        # Dropout masks come from the global generator: seed it per step as well.
        torch.manual_seed(step_seed(cfg.seed, p.step, self.world.rank))
        loss = float(self.step_runner(batches, lr))
        if not math.isfinite(loss):
            raise ModelError(f"the loss became {loss} at step {p.step}; try a lower --lr")
        seconds = time.perf_counter() - t0
        if self.threads:
            self.threads.record(self._steps_here, threads, seconds)
        self._steps_here += 1
        p.step_time_s += seconds
        p.step += 1
        p.tokens += self.tokens_per_step
        self._record_train_loss(loss)
        self._show(bar, loss, elapsed)
        if self.on_step is not None:
            self.on_step(p.step)

    def _show(self, bar: tqdm | None, loss: float, elapsed: float) -> None:
        if bar is None:
            return
        p = self.progress
        bar.update(int(1000 * self.schedule.progress(p.step, elapsed)) - bar.n)
        tokens_per_s = p.tokens / max(p.step_time_s, 1e-9)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", step=p.step)

    def _micro_batches(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        cfg, T = self.cfg, self.model.config.block_size
        for micro in range(cfg.grad_accum):
            g = step_generator(cfg.seed, step * cfg.grad_accum + micro, self.world.rank)
            x, y = random_windows(self.train_tokens, cfg.batch_size, T, g)
            yield (
                x.to(self.world.device, non_blocking=True),
                y.to(self.world.device, non_blocking=True),
            )

    def _record_train_loss(self, loss: float) -> None:
        p = self.progress
        p.pending.append(loss)
        if len(p.pending) >= _CURVE_EVERY:
            p.train_curve.append((p.step, sum(p.pending) / len(p.pending)))
            p.pending.clear()

    def _bar(self) -> tqdm | None:
        if not (self.cfg.progress_bar and self.world.is_main):
            return None
        return tqdm(
            total=1000,
            initial=int(1000 * self.schedule.progress(self.progress.step, self.progress.elapsed_s)),
            bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
            desc=f"train {self.preset}",
            dynamic_ncols=True,
            mininterval=1.0,
        )

    # ------------------------------------------------------------------ evaluation, saving

    def _evaluate_and_save(self) -> None:
        p, cfg = self.progress, self.cfg
        loss = evaluate_loss(
            self.model, self.data.val, max_windows=cfg.eval_windows, amp_dtype=self.amp_dtype
        )
        # Every rank computed the same number; rank 0's is the one everyone acts on.
        val_loss = ddp.broadcast_floats([loss.loss], self.world)[0]
        p.val_curve.append((p.step, val_loss))
        log.info("step %d: val loss %.4f (bpc %.3f)", p.step, val_loss, loss.bpc)
        if val_loss < p.best_val_loss - _MIN_IMPROVEMENT:
            p.best_val_loss, p.best_step, p.evals_since_best = val_loss, p.step, 0
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if self.world.is_main:
                self._save_checkpoint({"val_loss_subset": val_loss, "step": p.step})
        else:
            p.evals_since_best += 1
            if cfg.patience and p.evals_since_best >= cfg.patience:
                p.stopped = "early_stop"
                log.info("no improvement in %d evaluations: stopping early", cfg.patience)
        if self.world.is_main:
            self._save_state()
            self._plot()
        ddp.barrier(self.world)

    def _save_checkpoint(self, metrics: dict[str, Any]) -> None:
        save_checkpoint_beside_state(
            self.out,
            self._model_to_save(),
            self.tokenizer,
            preset=self.preset,
            metrics=metrics,
            provenance=self.provenance,
            extra_files=self.extra_files,
        )

    def _save_state(self) -> None:
        save_state(
            self.out,
            self.model,
            self.optimizer,
            self.tokenizer,
            preset=self.preset,
            progress=self.progress,
        )

    def _model_to_save(self) -> nn.Module:
        dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        dtype = dtypes[self.cfg.save_dtype]
        if dtype is None:
            return self.model
        return copy.deepcopy(self.model).to(dtype)

    def _plot(self) -> None:
        p = self.progress
        title = f"{self.preset}: best val {p.best_val_loss:.3f} nats/token at step {p.best_step}"
        if self.out.is_dir():
            plot_losses(self.out / LOSS_PLOT, p.train_curve, p.val_curve, title=title)

    # ------------------------------------------------------------------------- finishing

    def _finish(self) -> TrainResult:
        p = self.progress
        if not p.val_curve or p.val_curve[-1][0] != p.step:
            self._evaluate_and_save()
        self._restore_best()
        metrics: dict[str, Any] = {}
        if self.world.is_main:
            report = evaluate_model(
                self.model,
                self.tokenizer,
                self.data.val,
                self.data.vocabulary,
                amp_dtype=self.amp_dtype,
                seed=self.cfg.seed,
                samples_per_prompt=self.cfg.samples_per_prompt,
            )
            metrics = {**report.to_dict(), **self._run_metrics()}
            self._save_checkpoint(metrics)
            self._plot()
            remove_state(self.out)
            log.info(
                "done (%s): val %.4f nats/token, %.3f bits/char, word validity %.1f%%",
                p.stopped,
                report.val_loss,
                report.val_bpc,
                100 * report.word_validity,
            )
        ddp.barrier(self.world)
        return TrainResult(self.out, metrics, self.model)

    def _restore_best(self) -> None:
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        elif (self.out / WEIGHTS_FILE).is_file():
            # Resumed with no new best since: the best so far is the checkpoint on disk.
            best = load_checkpoint(self.out, device=self.world.device)
            self.model.load_state_dict(best.model.state_dict())

    def _run_metrics(self) -> dict[str, Any]:
        p = self.progress
        tokens_per_s = p.tokens / max(p.step_time_s, 1e-9)
        chars_per_token = self.data.train.n_chars / max(1, len(self.data.train))
        return {
            "steps": p.step,
            "best_step": p.best_step,
            "stopped": p.stopped,
            "train_tokens": p.tokens,
            "train_loss": p.train_curve[-1][1] if p.train_curve else None,
            "tokens_per_s": tokens_per_s,
            "chars_per_s": tokens_per_s * chars_per_token,
            "wall_time_s": p.elapsed_s,
            "params": self.model.num_params(),
            "world_size": self.world.world_size,
            "precision": str(self.amp_dtype or torch.float32).removeprefix("torch."),
            "train_config": dataclasses.asdict(self.cfg),
            "history": {"train": p.train_curve, "val": p.val_curve},
        }


@contextlib.contextmanager
def interrupts_between_steps() -> Iterator[Callable[[], bool]]:
    """Ctrl-C / SIGTERM set a flag that the loop checks between steps.

    An interrupt landing between a backward pass and the optimizer update (or halfway
    through saving) would leave weights, optimizer and step count out of step with each
    other; deferring it to a step boundary keeps the saved state consistent. A second
    signal acts at once, as usual.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def request(signum: int, frame: object) -> None:
        requested.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in signals:
        signal.signal(sig, request)
    try:
        yield requested.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
