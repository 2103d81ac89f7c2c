"""``parley train`` and ``parley eval``: options in, one line of outcome out.

The run itself is :func:`engine.train.run.run_training`; scoring and publishing are in
:mod:`engine.train.scoring`. Anything wrong with the user's input (an unreadable export, a bad
checkpoint, an unknown preset) is a ``ParleyError`` and ends as one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from bot.errors import ParleyError
from bot.settings import Settings
from engine.quality.report import QualityReport
from engine.train import ddp
from engine.train.archive import export_archive
from engine.train.evaluate import EvalReport
from engine.train.loop import TrainResult
from engine.train.run import RunOptions, resolve_preset, run_training, train_config
from engine.train.scoring import evaluate_checkpoint, publish
from engine.train.system import opted_out_users


@contextmanager
def clean_errors() -> Iterator[None]:
    """A ParleyError becomes one line and exit status 1; Ctrl-C/SIGTERM exit status 130."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # so a `kill` saves state like Ctrl-C does
    try:
        yield
    except ParleyError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command("train")
@click.option(
    "--data",
    "data",
    multiple=True,
    help="chitchat, or a JSONL / Telegram / Discord file. Repeatable.",
)
@click.option(
    "--from-archive",
    is_flag=True,
    help="Train on the conversation archive too (consent applied; plus any --data).",
)
@click.option(
    "--include-bot", is_flag=True, help="Keep the bot's own replies (excluded by default)."
)
@click.option("--preset", default=None, help="Model preset (default: settings train.preset).")
@click.option(
    "--tokenizer", type=click.Choice(["char", "bpe"]), default=None, help="Default: the preset's."
)
@click.option(
    "--vocab-size", type=click.IntRange(min=256), default=None, help="BPE vocabulary size."
)
@click.option(
    "--budget-s", type=click.FloatRange(min=1), default=None, help="Wall-clock budget in seconds."
)
@click.option("--max-steps", type=click.IntRange(min=1), default=None)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Checkpoint directory (rerun with the same one to resume).",
)
@click.option("--overwrite", is_flag=True, help="Start over even if --out holds a model or a run.")
@click.option("--seed", type=int, default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--grad-accum", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None)
@click.option(
    "--block-size", type=click.IntRange(min=8), default=None, help="Context length in tokens."
)
@click.option(
    "--eval-interval", type=click.IntRange(min=1), default=None, help="Steps between evaluations."
)
@click.option(
    "--patience",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Evaluations without improvement before stopping (0 = never).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option(
    "--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True
)
@click.option(
    "--save-dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch CPU threads (default: tuned by timing steps under a budget).",
)
@click.option(
    "--publish",
    is_flag=True,
    help="Add to the model registry; make it live if it beats the live model.",
)
@click.pass_obj
def train_command(settings: Settings, /, **options: Any) -> None:
    """Train a model on conversations and save it as a checkpoint."""
    with clean_errors():
        _train(settings, **options)


def _train(settings: Settings, **o: Any) -> None:
    preset = resolve_preset(o["preset"] or settings.train.preset)
    world = ddp.init_world(o["device"])
    try:
        out = o["out"] or settings.data_dir / "runs" / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        opted_out = opted_out_users(settings)
        data = tuple(o["data"]) or (() if o["from_archive"] else ("chitchat",))
        if o["from_archive"]:
            data = (str(export_archive(settings, out, opted_out)), *data)
        opts = RunOptions(
            data=data,
            include_bot=o["include_bot"],
            opted_out=tuple(opted_out),
            val_fraction=o["val_fraction"],
            preset=preset,
            tokenizer=o["tokenizer"],
            vocab_size=o["vocab_size"],
            dropout=o["dropout"],
            block_size=o["block_size"],
            out=out,
            cache_dir=settings.data_dir / "cache",
            overwrite=o["overwrite"],
        )
        cfg = train_config(
            preset,
            max_steps=o["max_steps"],
            budget_s=o["budget_s"] or (None if o["max_steps"] else settings.train.budget_s),
            seed=o["seed"] if o["seed"] is not None else settings.train.seed,
            batch_size=o["batch_size"],
            grad_accum=o["grad_accum"],
            lr=o["lr"],
            eval_interval=o["eval_interval"],
            patience=o["patience"],
            compile=o["compile_"],
            precision=o["precision"],
            save_dtype=o["save_dtype"],
            threads=o["threads"],
        )
        if world.is_main:
            click.echo(f"training {preset} into {out}", err=True)
        result = run_training(opts, cfg, world)
        if world.is_main:
            _print_summary(result)
            if o["publish"]:
                click.echo(publish(settings, result.checkpoint, opts, world.device))
    finally:
        ddp.close_world(world)


def _print_summary(result: TrainResult) -> None:
    m = result.metrics
    click.echo(
        f"saved {result.checkpoint}: val {m['val_loss']:.4f} nats/token, "
        f"{m['val_bpc']:.3f} bits/char, word validity {100 * m['word_validity']:.1f}%, "
        f"{m['steps']} steps, {m['train_tokens']:,} tokens at {m['tokens_per_s']:,.0f} tokens/s "
        f"({m['stopped']})"
    )


@click.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--data", "data", multiple=True, help="Default: the sources the model was trained on."
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.pass_obj
def eval_command(
    settings: Settings, checkpoint: Path, as_json: bool, data: tuple[str, ...], device: str
) -> None:
    """Score a checkpoint: validation and test loss, R@1 of 10 on the test split, replies."""
    with clean_errors():
        report, test = evaluate_checkpoint(settings, checkpoint, data, ddp.pick_device(device))
        if as_json:
            merged = {"checkpoint": str(checkpoint), **test.to_dict(), **report.to_dict()}
            click.echo(json.dumps(merged, indent=2))
        else:
            _print_report(report, test)


def _print_report(report: EvalReport, test: QualityReport) -> None:
    click.echo(f"val loss       {report.val_loss:.4f} nats/token ({report.val_tokens:,} tokens)")
    click.echo(f"val bpc        {report.val_bpc:.4f} bits/char")
    click.echo(f"test bpc       {_num(test.test_bpc, 4)} bits/char ({test.test_tokens:,} tokens)")
    click.echo(
        f"R@1 of 10      {_num(test.r_at_1, 3)} (PMI {_num(test.r_at_1_pmi, 3)}, served ranking "
        f"{_num(test.r_at_1_fused, 3)}, TF-IDF floor {_num(test.r_at_1_tfidf, 3)}; "
        f"{test.contexts} test contexts)"
    )
    click.echo(f"word validity  {100 * report.word_validity:.1f}% (strict)")
    click.echo(f"reply length   {report.reply_chars:.1f} characters")
    click.echo(f"distinct-2     {report.distinct_2:.3f}")
    for sample in report.samples:
        click.echo(f"\n> {sample['prompt']}\n{sample['reply']}")


def _num(value: float | None, digits: int) -> str:
    """A figure, or "n/a" where the test split was too small to measure it."""
    return "n/a" if value is None else f"{value:.{digits}f}"
