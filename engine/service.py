"""``parley engine``: load the model, start the worker, follow model swaps, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import click
import prometheus_client
import redis.asyncio as aioredis
import torch

from bot.errors import ConfigError, ModelError
from bot.queue import RequestConsumer, ShardLeases, cancel_and_wait
from bot.registry import ModelRegistry, ModelVersion, SwapTo, follow_live
from bot.safety import SafetyFilter
from bot.settings import EngineSettings, Settings
from engine.checkpoint import Checkpoint, load_checkpoint
from engine.hardware import cpu_has_native_bf16
from engine.models import LanguageModel
from engine.serve.batches import fastest, time_decode_steps
from engine.serve.replies import ReplyPicker
from engine.serve.scheduler import Scheduler
from engine.serve.worker import EngineWorker

log = logging.getLogger(__name__)

STARTER_MODEL = Path(__file__).parent / "starter"
"""The small model shipped in the repository, served until the owner trains their own."""


def choose_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("setting engine.device is 'cuda' but no CUDA device is available")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_model(settings: Settings, registry: ModelRegistry) -> Path:
    """The checkpoint to serve: the setting, else the registry's live version (checked, and
    copied into the local cache when the registry is a URL), else the starter."""
    if settings.engine.model is not None:
        return settings.engine.model
    live = registry.live()
    if live is not None:
        return registry.get(live.version).path
    if (STARTER_MODEL / "config.json").is_file():
        return STARTER_MODEL
    raise ModelError(
        "no model to serve: train one with `parley train`, or set engine.model "
        f"(looked in {registry.location} and {STARTER_MODEL})"
    )


def weights_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The dtype to load weights in: a GPU holds only its serving weights (bf16 unless told
    otherwise); a CPU keeps float32 weights, and cached states, whatever it serves from."""
    if device.type == "cuda":
        return torch.float32 if setting == "float32" else torch.bfloat16
    return None


DecodeTimer = Callable[[LanguageModel, int, Sequence[torch.dtype]], dict[torch.dtype, float]]
"""Seconds of one decode step per candidate dtype (:func:`time_decode_steps`)."""


def choose_decode_dtype(
    engine: EngineSettings,
    model: LanguageModel,
    device: torch.device,
    *,
    timer: DecodeTimer = time_decode_steps,
) -> torch.dtype | None:
    """The dtype a CPU serves from beside its float32 weights (``None``: the weights).

    ``auto`` takes bf16 only on a CPU that multiplies it natively and only where a measured
    decode step is faster with it: a GRU's large gate matmuls are (~1.7x), a small GPT's
    often are not. A GPU serves from the weights as loaded (:func:`weights_dtype`).
    """
    if device.type == "cuda" or engine.dtype == "float32":
        return None
    if engine.dtype == "bfloat16":
        return torch.bfloat16
    if not cpu_has_native_bf16():
        return None
    best = fastest(timer(model, engine.max_batch, (torch.float32, torch.bfloat16)))
    return None if best == torch.float32 else best


def load_for_serving(path: Path, device: torch.device, setting: str) -> Checkpoint:
    """The checkpoint at ``path`` on ``device``, its weights in :func:`weights_dtype`."""
    return load_checkpoint(path, device=device, dtype=weights_dtype(setting, device))


async def serve(
    settings: Settings,
    redis: aioredis.Redis,
    stop: asyncio.Event,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve requests until ``stop`` is set. ``ready`` is set once the model is loaded."""
    if settings.engine.torch_threads:
        torch.set_num_threads(settings.engine.torch_threads)
    device = choose_device(settings.engine.device)
    registry = ModelRegistry.from_settings(settings)
    path = await asyncio.to_thread(resolve_model, settings, registry)
    checkpoint = await asyncio.to_thread(load_for_serving, path, device, settings.engine.dtype)
    # Decided once per process, for the first model: a swapped-in version is served alike.
    decode = await asyncio.to_thread(choose_decode_dtype, settings.engine, checkpoint.model, device)
    log.info(
        "serving model %s (%s) on %s in %s",
        checkpoint.version,
        checkpoint.preset,
        device,
        str(decode or checkpoint.model.dtype).removeprefix("torch."),
    )
    worker_id = settings.engine.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    replies = ReplyPicker(settings.reply, SafetyFilter.from_settings(settings.safety))
    await asyncio.to_thread(replies.prepare, checkpoint)  # the index, off the event loop
    scheduler = Scheduler(
        checkpoint,
        settings.engine,
        settings.sampling,
        device,
        decode_dtype=decode,
        replies=replies,
    )
    consumer = RequestConsumer(redis, settings.redis, consumer=worker_id)
    worker = EngineWorker(settings, redis, consumer, scheduler, worker_id)
    # Shards are leased so a conversation stays on the worker that holds its cached state;
    # a dead worker's shards (and pending requests) move to the others.
    leases = ShardLeases(redis, settings.redis, worker_id)
    lease_stop = asyncio.Event()
    leasing = asyncio.create_task(leases.run(consumer, lease_stop), name="leases")
    # A fixed engine.model is not the registry's: no catching up with its live version.
    serving = checkpoint.version if settings.engine.model is None else None
    swaps = asyncio.create_task(
        follow_live(
            registry, redis, _swapper(settings, scheduler, replies, device), serving=serving
        ),
        name="swaps",
    )
    if ready is not None:
        ready.set()
    try:
        await worker.run(stop)
    finally:
        lease_stop.set()
        await cancel_and_wait([swaps])
        await leasing


def _swapper(
    settings: Settings, scheduler: Scheduler, replies: ReplyPicker, device: torch.device
) -> SwapTo:
    """What :func:`bot.registry.follow_live` calls with a checked version: load it in the
    background (a checkpoint that does not load raises ModelError and nothing changes); the
    scheduler swaps between steps."""

    async def swap_to(version: ModelVersion) -> None:
        checkpoint = await asyncio.to_thread(
            load_for_serving, version.path, device, settings.engine.dtype
        )
        await asyncio.to_thread(replies.prepare, checkpoint)
        scheduler.swap(checkpoint)
        log.info("model %s loaded; swapping in between steps", version.version)

    return swap_to


@click.command("engine")
@click.option(
    "--instance",
    type=click.IntRange(min=0),
    default=0,
    help="Index of this worker on its host (a systemd unit's %i).",
)
@click.option(
    "--metrics-port-base",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve metrics on this port + --instance (instead of engine.metrics_port).",
)
@click.pass_obj
def engine_command(settings: Settings, instance: int, metrics_port_base: int | None) -> None:
    """Run one engine worker against the Redis at PARLEY_REDIS_URL."""
    from bot import systemd
    from bot.cli import run_async
    from bot.redis import connect
    from bot.runtime import find_redis_url, stop_event_on_signals

    async def main() -> None:
        port = systemd.instance_port(metrics_port_base, instance, settings.engine.metrics_port)
        stop, ready = stop_event_on_signals(), asyncio.Event()
        async with systemd.supervised(ready, stop, name="engine worker"):
            if port:
                prometheus_client.start_http_server(port)
                log.info("metrics on :%d/metrics", port)
            redis = await connect(find_redis_url(settings))
            try:
                await serve(settings, redis, stop, ready=ready)
            finally:
                await redis.aclose()

    run_async(main())
