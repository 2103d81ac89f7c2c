"""``parley train`` and ``parley eval``: the commands, and the run they put together.

A training run is a chain of small steps, each turning one thing into the next::

    --data specs -> TextSplits -> Tokenizer -> TrainData -> model -> Trainer.run() -> checkpoint
                                                                 -> (--publish) registry

Anything wrong with the user's input (an unreadable export, a bad checkpoint, an unknown
preset) is a ``ParleyError`` and ends as one line on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from bot.errors import ModelError, NotRunning, ParleyError
from bot.redis import connect
from bot.registry import ModelRegistry
from bot.runtime import find_redis_url
from bot.settings import Settings
from bot.store import ConversationStore
from engine.checkpoint import load_checkpoint
from engine.models import LanguageModel, build_model, preset_config
from engine.models.config import DEFAULT_PRESET
from engine.tokenizer import Tokenizer, load_tokenizer
from engine.train import ddp
from engine.train.data import (
    TextSplits,
    TokenSplit,
    TrainData,
    encode_split,
    fit_tokenizer,
    load_texts,
    texts_fingerprint,
    training_vocabulary,
)
from engine.train.evaluate import EvalReport, autocast_dtype, evaluate_loss, evaluate_model
from engine.train.loop import STATE_DIR, TrainConfig, Trainer, TrainResult, find_state
from engine.train.loop import saved_tokenizer as state_tokenizer
from engine.train.schedule import recipe_for

log = logging.getLogger(__name__)

SPLIT_SEED = 0
"""The train/validation split never depends on the training seed: every run and the live
model are scored on the same held-out conversations."""


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a run trains on and what it builds; the optimizer's side is ``TrainConfig``."""

    data: tuple[str, ...] = ("chitchat",)
    include_bot: bool = False
    opted_out: tuple[str, ...] = ()
    val_fraction: float = 0.05
    preset: str = "default"
    tokenizer: str | None = None
    vocab_size: int | None = None
    dropout: float | None = None
    block_size: int | None = None
    out: Path
    cache_dir: Path | None = None
    overwrite: bool = False


def resolve_preset(name: str) -> str:
    """``"default"`` (the settings' default) means the preset the benchmark found best."""
    return DEFAULT_PRESET if name == "default" else name


def train_config(preset: str, **overrides: Any) -> TrainConfig:
    """The preset's recipe as a TrainConfig, with every non-None override applied."""
    arch = preset_config(resolve_preset(preset), 1).arch
    recipe = recipe_for(resolve_preset(preset), arch)
    base: dict[str, Any] = {
        "lr": recipe.lr,
        "batch_size": recipe.batch_size,
        "grad_accum": recipe.grad_accum,
        "warmup_steps": recipe.warmup_steps,
        "eval_interval": recipe.eval_interval,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- the run


def run_training(
    opts: RunOptions, cfg: TrainConfig, world: ddp.World | None = None, **trainer_kw: Any
) -> TrainResult:
    """Build the data, tokenizer and model that ``opts`` describe and train them."""
    world = world or ddp.World(0, 1, ddp.pick_device("auto"))
    preset = resolve_preset(opts.preset)
    prepare_out(opts.out, opts.overwrite, world)
    texts = load_texts(
        opts.data,
        include_bot=opts.include_bot,
        opted_out=opts.opted_out,
        val_fraction=opts.val_fraction,
        split_seed=SPLIT_SEED,
    )
    if not texts.train or not texts.val:
        raise ModelError(
            f"not enough conversations to train on ({len(texts.train)} train, "
            f"{len(texts.val)} validation); add data or lower --val-fraction"
        )
    with _main_first(world):
        tokenizer = _tokenizer(opts, preset, texts)
        data = _encode(tokenizer, texts, opts.cache_dir)
    model = _model(preset, tokenizer, opts, cfg.seed)
    provenance = _provenance(opts, cfg, preset, tokenizer, texts, model)
    trainer = Trainer(
        model, tokenizer, data, cfg, opts.out,
        preset=preset, provenance=provenance, world=world, **trainer_kw,
    )  # fmt: skip
    return trainer.run()


def prepare_out(out: Path, overwrite: bool, world: ddp.World) -> None:
    """Refuse to clobber a finished model unless asked; with ``overwrite``, start over."""
    if not world.is_main:
        return
    if overwrite:
        for path in (out / STATE_DIR, out.parent / f".{out.name}.{STATE_DIR}"):
            shutil.rmtree(path, ignore_errors=True)
        return
    if find_state(out) is None and (out / "config.json").exists():
        raise ModelError(
            f"{out} already holds a finished model; choose another --out or pass --overwrite"
        )


@contextmanager
def _main_first(world: ddp.World) -> Iterator[None]:
    """Rank 0 runs the block first (filling the caches); the others then read them."""
    if not world.is_main:
        ddp.barrier(world)
    yield
    if world.is_main:
        ddp.barrier(world)


def _tokenizer(opts: RunOptions, preset: str, texts: TextSplits) -> Tokenizer:
    resumed = state_tokenizer(opts.out)
    if resumed is not None:
        return resumed  # the run being resumed trained with this one
    recipe = recipe_for(preset, preset_config(preset, 1).arch)
    kind = opts.tokenizer or recipe.tokenizer
    vocab_size = opts.vocab_size or recipe.vocab_size or 4096
    if opts.cache_dir is None:
        return fit_tokenizer(kind, texts.train, vocab_size)
    # BPE training takes seconds on the chitchat corpus: worth keeping across runs.
    cached = opts.cache_dir / f"tokenizer-{kind}-{vocab_size}-{texts_fingerprint(texts.train)}"
    if (cached / "tokenizer.json").is_file():
        return load_tokenizer(cached)
    tokenizer = fit_tokenizer(kind, texts.train, vocab_size)
    cached.mkdir(parents=True, exist_ok=True)
    tokenizer.save(cached)
    return tokenizer


def _encode(tokenizer: Tokenizer, texts: TextSplits, cache_dir: Path | None) -> TrainData:
    return TrainData(
        train=encode_split(tokenizer, texts.train, cache_dir),
        val=encode_split(tokenizer, texts.val, cache_dir),
        vocabulary=training_vocabulary(texts.train),
    )


def _model(preset: str, tokenizer: Tokenizer, opts: RunOptions, seed: int) -> LanguageModel:
    config = preset_config(preset, tokenizer.vocab_size)
    changes: dict[str, Any] = {"dropout": opts.dropout, "block_size": opts.block_size}
    config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
    torch.manual_seed(seed)  # the same initial weights on every rank and every rerun
    return build_model(config)


def _provenance(
    opts: RunOptions,
    cfg: TrainConfig,
    preset: str,
    tokenizer: Tokenizer,
    texts: TextSplits,
    model: LanguageModel,
) -> dict[str, Any]:
    return {
        **texts.provenance,
        "preset": preset,
        "model": model.config.to_dict(),
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
        "seed": cfg.seed,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv[1:],
    }


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


# ---------------------------------------------------------------------------- commands


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
        opts = RunOptions(
            data=tuple(o["data"]) or ("chitchat",),
            include_bot=o["include_bot"],
            opted_out=tuple(opted_out_users(settings)),
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
    """Score a checkpoint: held-out loss, bits/char, and sampled replies."""
    with clean_errors():
        report = evaluate_checkpoint(settings, checkpoint, data, ddp.pick_device(device))
        if as_json:
            click.echo(json.dumps({"checkpoint": str(checkpoint), **report.to_dict()}, indent=2))
        else:
            _print_report(report)


def evaluate_checkpoint(
    settings: Settings, path: Path, data: tuple[str, ...], device: torch.device
) -> EvalReport:
    """The checkpoint scored on the validation split of the data it was trained on."""
    ckpt = load_checkpoint(path, device=device)
    prov = ckpt.provenance
    texts = load_texts(
        data or tuple(prov.get("data") or ("chitchat",)),
        include_bot=bool(prov.get("include_bot", False)),
        opted_out=tuple(opted_out_users(settings)),
        val_fraction=float(prov.get("val_fraction", 0.05)),
        split_seed=int(prov.get("split_seed", 0)),
    )
    val = encode_split(ckpt.tokenizer, texts.val, settings.data_dir / "cache")
    return evaluate_model(
        ckpt.model,
        ckpt.tokenizer,
        val,
        training_vocabulary(texts.train),
        amp_dtype=autocast_dtype(device, "auto"),
    )


def _print_report(report: EvalReport) -> None:
    click.echo(f"val loss       {report.val_loss:.4f} nats/token ({report.val_tokens:,} tokens)")
    click.echo(f"val bpc        {report.val_bpc:.4f} bits/char")
    click.echo(f"word validity  {100 * report.word_validity:.1f}%")
    click.echo(f"distinct-2     {report.distinct_2:.3f}")
    for sample in report.samples:
        click.echo(f"\n> {sample['prompt']}\n{sample['reply']}")


# ------------------------------------------------------------------ registry and Redis


def publish(settings: Settings, checkpoint: Path, opts: RunOptions, device: torch.device) -> str:
    """Add the checkpoint to the registry; make it live if it beats the live model's bpc.

    Both models are scored on the same held-out split (the live one may have another
    tokenizer, so its score is recomputed here rather than read from its metrics). Returns
    what happened, for the user.
    """
    registry = ModelRegistry(settings.models_dir)
    live = registry.live()
    added = registry.add(checkpoint)
    new_bpc = float(added.metrics["val_bpc"])
    if live is None:
        registry.set_live(added.version)
        _announce(settings, registry, added.version)
        return f"published {added.version} ({new_bpc:.3f} bits/char); live (the first model)"
    texts = load_texts(
        opts.data,
        include_bot=opts.include_bot,
        opted_out=opts.opted_out,
        val_fraction=opts.val_fraction,
        split_seed=SPLIT_SEED,
    )
    live_bpc = score_bpc(live.path, texts.val, opts.cache_dir, device)
    if new_bpc < live_bpc:
        registry.set_live(added.version)
        _announce(settings, registry, added.version)
        return (
            f"published {added.version}: {new_bpc:.3f} bits/char beats live {live.version}'s "
            f"{live_bpc:.3f}; {added.version} is live now"
        )
    return (
        f"published {added.version}: {new_bpc:.3f} bits/char does not beat live "
        f"{live.version}'s {live_bpc:.3f}; {live.version} stays live"
    )


def score_bpc(
    path: Path, val_texts: list[str], cache_dir: Path | None, device: torch.device
) -> float:
    """A checkpoint's bits per character on ``val_texts``, through its own tokenizer."""
    ckpt = load_checkpoint(path, device=device)
    val: TokenSplit = encode_split(ckpt.tokenizer, val_texts, cache_dir)
    return evaluate_loss(ckpt.model, val, amp_dtype=autocast_dtype(device, "auto")).bpc


def opted_out_users(settings: Settings) -> list[str]:
    """Users who asked to be forgotten (``/forget``), from the running system's Redis.

    No Redis configured and no ``parley run`` running means nobody could have asked. A
    configured Redis that does not answer is an error: training without the list could
    train on someone who opted out.
    """
    try:
        url = find_redis_url(settings)
    except NotRunning:
        return []
    return asyncio.run(_read_opted_out(url, settings.engine.state_ttl_s))


async def _read_opted_out(url: str, ttl_s: int) -> list[str]:
    redis = await connect(url)
    try:
        return await ConversationStore(redis, ttl_s=ttl_s).opted_out_users()
    finally:
        await redis.aclose()


def _announce(settings: Settings, registry: ModelRegistry, version: str) -> None:
    """Tell running engines to swap, when a Parley is running; the LIVE file is already set."""
    try:
        url = find_redis_url(settings)
    except NotRunning:
        return

    async def announce() -> None:
        redis = await connect(url)
        try:
            await registry.announce(redis, version)
        finally:
            await redis.aclose()

    try:
        asyncio.run(announce())
    except ParleyError as e:
        log.warning("could not announce %s to running engines: %s", version, e)
