"""One retrain job, as the trainer service's child process: ``python -m engine.train.retrain SPEC``.

The chain::

    spec -> texts (archive export + corpora, one fixed split) -> live model (warm start) or a
    fresh one -> Trainer.run() -> both models scored on the same held-out texts, the
    archive's and the corpora's apart -> verdict (bot.trainer.gate)

Progress and the verdict go to standard output as :class:`bot.wire.JobUpdate` JSON lines, at
most one progress line every ``report_every_s``; logs go to standard error. The child decides
whether the new model beats the live one (``status="published"`` means "publish it",
``"kept"`` means the live one stays) but publishes nothing itself: the trainer service adds
the checkpoint to the registry and moves the live pointer, so a crash here publishes nothing.
Exit status 0 when a verdict was printed, 1 with one line on standard error otherwise.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from bot import wire
from bot.errors import ModelError, ParleyError
from bot.trainer.gate import Scores, decide
from bot.trainer.spec import MODEL_DIR, RetrainSpec, read_spec
from bot.wire import JobStatus, JobUpdate
from engine.checkpoint import Checkpoint, load_checkpoint
from engine.models import LanguageModel, build_model, preset_config
from engine.tokenizer import Tokenizer
from engine.train import ddp
from engine.train.data import (
    TextSplits,
    TrainData,
    count_chars,
    encode_split,
    fit_tokenizer,
    load_texts,
    training_vocabulary,
)
from engine.train.evaluate import autocast_dtype, evaluate_loss
from engine.train.loop import TrainConfig, Trainer
from engine.train.run import SPLIT_SEED, remembered_replies, resolve_preset
from engine.train.schedule import recipe_for

log = logging.getLogger(__name__)

MAX_REPEATS = 20
"""Most copies of the archive in one retrain's training text (more would be memorising)."""
WARM_LR_FACTOR = 1 / 3
"""A warm start continues a trained model: a lower rate keeps more of what it knew."""


class Reporter:
    """Prints :class:`JobUpdate` lines for one job, progress at most every ``every_s``."""

    def __init__(self, spec: RetrainSpec, out: BinaryIO) -> None:
        self.spec, self.out = spec, out
        self.started = time.monotonic()
        self.last_s = -math.inf

    def update(self, status: JobStatus, *, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        if not force and now - self.last_s < self.spec.report_every_s:
            return
        self.last_s = now
        update = JobUpdate(
            job_id=self.spec.job_id,
            status=status,
            elapsed_s=round(now - self.started, 1),
            live_version=self.spec.live_version,
            time=time.time(),
            **fields,
        )
        self.out.write(wire.encode_job_line(update))
        self.out.flush()

    def step(self, trainer: Trainer, step: int) -> None:
        curve = trainer.progress.train_curve
        pending = trainer.progress.pending
        loss = pending[-1] if pending else (curve[-1][1] if curve else None)
        val = trainer.progress.val_curve[-1][1] if trainer.progress.val_curve else None
        self.update(
            "running",
            step=step,
            steps=self.spec.max_steps,
            loss=loss,
            val_loss=val,
            eta_s=self._eta(step, trainer.progress.elapsed_s),
            message=f"training, step {step}",
        )

    def _eta(self, step: int, train_s: float) -> float | None:
        """Seconds left: the budget's rest, or the steps' at the pace so far if sooner."""
        if step < 2 or train_s <= 0:
            return None  # the first step's time includes compiling
        left = [self.spec.budget_s - train_s]
        if self.spec.max_steps:
            left.append((self.spec.max_steps - step) * train_s / step)
        return round(max(0.0, min(left)), 1)


@dataclass(frozen=True)
class JobData:
    texts: TextSplits
    """What the model trains on, and all held-out texts (its periodic evaluations)."""
    archive_val: list[str]
    corpora_val: list[str]
    """The held-out texts by source, for the gate (:mod:`bot.trainer.gate`)."""


def load_data(spec: RetrainSpec) -> JobData:
    """The archive's and the corpora's conversations, each split by the fixed hash; the
    archive's training side repeated up to ``spec.archive_share`` (:func:`mix`)."""
    parts = {
        name: load_texts(
            specs,
            include_bot=False,
            opted_out=spec.opted_out,
            val_fraction=spec.val_fraction,
            split_seed=SPLIT_SEED,
        )
        for name, specs in (
            ("archive", (spec.archive,) if spec.archive else ()),
            ("corpora", spec.corpora),
        )
        if specs
    }
    archive, corpora = parts.get("archive"), parts.get("corpora")
    if archive is not None and corpora is not None:
        train, repeats = mix(archive.train, corpora.train, spec.archive_share)
        provenance = {
            "data": [spec.archive, *spec.corpora],
            "include_bot": False,
            "val_fraction": spec.val_fraction,
            "split_seed": SPLIT_SEED,
            "archive": archive.provenance,
            "corpora": corpora.provenance,
            "archive_repeats": repeats,
        }
        remembered = archive.remembered + corpora.remembered
        texts = TextSplits(train, archive.val + corpora.val, provenance, remembered=remembered)
    else:
        texts = archive or corpora  # type: ignore[assignment]
    if texts is None or not texts.train or not texts.val:
        raise ModelError("not enough conversations to train on and to hold out")
    return JobData(
        texts,
        archive.val if archive is not None else [],
        corpora.val if corpora is not None else [],
    )


def mix(archive: list[str], corpora: list[str], share: float) -> tuple[list[str], int]:
    """``archive`` repeated until it is at least ``share`` of the characters (at most
    :data:`MAX_REPEATS` times), then ``corpora``; and how many times it went in."""
    have, other = count_chars(archive), count_chars(corpora)
    repeats = 1
    if share > 0 and have and other:
        repeats = math.ceil(share * other / ((1.0 - share) * have))
        repeats = max(1, min(MAX_REPEATS, repeats))
    return archive * repeats + corpora, repeats


def starting_point(
    spec: RetrainSpec, live: Checkpoint | None, texts: TextSplits, device: torch.device
) -> tuple[LanguageModel, Tokenizer, str]:
    """The live model (a copy, in float32, its tokenizer kept) or fresh weights."""
    if spec.warm_start and live is not None:
        warm = load_checkpoint(live.path, device=device)
        return warm.model.float().train(), warm.tokenizer, warm.preset or spec.preset
    preset = resolve_preset(spec.preset)
    recipe = recipe_for(preset, preset_config(preset, 1).arch)
    tokenizer = fit_tokenizer(recipe.tokenizer, texts.train, recipe.vocab_size or 4096)
    torch.manual_seed(spec.seed)
    return build_model(preset_config(preset, tokenizer.vocab_size)), tokenizer, preset


def job_config(spec: RetrainSpec, preset: str, arch: str, *, warm: bool) -> TrainConfig:
    """The preset's recipe (its architecture's, for a preset without one), bounded by the
    job's budget; a warm start fine-tunes at a third of the rate with a short warm-up."""
    recipe = recipe_for(preset, arch)
    eval_interval = recipe.eval_interval
    if spec.max_steps:
        eval_interval = max(1, min(eval_interval, spec.max_steps // 4 or 1))
    return TrainConfig(
        lr=recipe.lr * (WARM_LR_FACTOR if warm else 1.0),
        batch_size=recipe.batch_size,
        grad_accum=recipe.grad_accum,
        warmup_steps=min(recipe.warmup_steps, 20) if warm else recipe.warmup_steps,
        eval_interval=eval_interval,
        budget_s=spec.budget_s,
        max_steps=spec.max_steps,
        seed=spec.seed,
        progress_bar=False,
    )


def score_bpc(ckpt: Checkpoint, val_texts: list[str], spec: RetrainSpec) -> float | None:
    """Bits per character of ``ckpt`` on the held-out texts, through its own tokenizer
    (``None`` with no texts)."""
    if not val_texts:
        return None
    cache = Path(spec.cache_dir) if spec.cache_dir else None
    val = encode_split(ckpt.tokenizer, val_texts, cache)
    device = ckpt.model.device
    return evaluate_loss(ckpt.model, val, amp_dtype=autocast_dtype(device, "auto")).bpc


def scores(ckpt: Checkpoint, data: JobData, spec: RetrainSpec) -> Scores:
    return Scores(score_bpc(ckpt, data.archive_val, spec), score_bpc(ckpt, data.corpora_val, spec))


def run(spec: RetrainSpec, reporter: Reporter) -> None:
    device = ddp.pick_device("auto")
    reporter.update("running", force=True, message="reading the archive and corpora")
    job_data = load_data(spec)
    texts = job_data.texts
    live = load_checkpoint(Path(spec.live_model), device=device) if spec.live_model else None
    model, tokenizer, preset = starting_point(spec, live, texts, device)
    cache = Path(spec.cache_dir) if spec.cache_dir else None
    data = TrainData(
        train=encode_split(tokenizer, texts.train, cache),
        val=encode_split(tokenizer, texts.val, cache),
        vocabulary=training_vocabulary(texts.train),
    )
    cfg = job_config(spec, preset, model.config.arch, warm=spec.warm_start and live is not None)
    provenance = {
        **texts.provenance,
        "warm_start_from": spec.live_version if spec.warm_start and live else None,
        "job": spec.job_id,
    }
    trainer: Trainer | None = None

    def on_step(step: int) -> None:
        assert trainer is not None
        reporter.step(trainer, step)

    out = Path(spec.run_dir) / MODEL_DIR
    with remembered_replies(out, texts) as replies:
        trainer = Trainer(
            model, tokenizer, data, cfg, out,
            preset=preset, provenance=provenance, on_step=on_step, extra_files=replies,
        )  # fmt: skip
        reporter.update("running", force=True, message="training", steps=spec.max_steps)
        result = trainer.run()
    reporter.update("running", force=True, message="scoring the new and the live model")
    new = load_checkpoint(result.checkpoint, device=device)
    verdict = decide(
        scores(new, job_data, spec),
        scores(live, job_data, spec) if live is not None else None,
        min_improvement=spec.min_improvement,
        max_corpora_rise=spec.max_corpora_rise,
        live_name=spec.live_version or "the live model",
    )
    samples = tuple(
        (str(s["prompt"]), str(s["reply"])) for s in result.metrics.get("samples", [])[:3]
    )
    reporter.update(
        "published" if verdict.publish else "kept",
        force=True,
        final=True,
        step=int(result.metrics.get("steps", 0)),
        val_loss=float(result.metrics["val_loss"]),
        new_bpc=verdict.new_bpc,
        live_bpc=verdict.live_bpc,
        samples=samples,
        message=verdict.message,
    )


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    if len(argv) != 1:
        print("usage: python -m engine.train.retrain JOB_SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = read_spec(Path(argv[0]))
        run(spec, Reporter(spec, sys.stdout.buffer))
    except ParleyError as e:
        print(f"retrain failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
