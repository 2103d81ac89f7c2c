"""``parley engine``: load the model, start the worker, follow model swaps, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import click
import prometheus_client
import redis.asyncio as aioredis
import torch

from bot import keys
from bot.errors import ConfigError, ModelError
from bot.queue import RequestConsumer, ShardLeases, cancel_and_wait
from bot.registry import ModelRegistry
from bot.settings import Settings
from engine.checkpoint import Checkpoint, load_checkpoint
from engine.graphs import cpu_has_native_bf16
from engine.scheduler import Scheduler
from engine.worker import EngineWorker

log = logging.getLogger(__name__)

STARTER_MODEL = Path(__file__).parent / "starter"
"""The small model shipped in the repository, served until the owner trains their own."""


def choose_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("setting engine.device is 'cuda' but no CUDA device is available")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_model(settings: Settings) -> Path:
    """The checkpoint to serve: the setting, else the registry's live version, else the starter."""
    if settings.engine.model is not None:
        return settings.engine.model
    live = ModelRegistry(settings.models_dir).live()
    if live is not None:
        return live.path
    if (STARTER_MODEL / "config.json").is_file():
        return STARTER_MODEL
    raise ModelError(
        "no model to serve: train one with `parley train`, or set engine.model "
        f"(looked in {settings.models_dir} and {STARTER_MODEL})"
    )


def serving_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The dtype ``engine.dtype`` means on ``device``."""
    if setting == "auto":
        native = device.type == "cuda" or cpu_has_native_bf16()
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if setting == "bfloat16" else torch.float32


def _load(path: Path, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    # A GPU holds only the serving weights. A CPU keeps float32 weights (and cached states)
    # and the scheduler serves from a copy in ``dtype``: see engine.graphs.serving_copy.
    weights = dtype if device.type == "cuda" else None
    return load_checkpoint(path, device=device, dtype=weights)


def decode_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype | None:
    """What the scheduler serves from beside the loaded weights (``None``: the weights)."""
    return None if device.type == "cuda" or dtype == torch.float32 else dtype


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
    dtype = serving_dtype(settings.engine.dtype, device)
    path = resolve_model(settings)
    checkpoint = await asyncio.to_thread(_load, path, device, dtype)
    log.info(
        "serving model %s (%s) on %s in %s",
        checkpoint.version,
        checkpoint.preset,
        device,
        str(dtype).removeprefix("torch."),
    )
    worker_id = settings.engine.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    scheduler = Scheduler(
        checkpoint,
        settings.engine,
        settings.sampling,
        device,
        decode_dtype=decode_dtype(dtype, device),
    )
    consumer = RequestConsumer(redis, settings.redis, consumer=worker_id)
    worker = EngineWorker(settings, redis, consumer, scheduler, worker_id)
    # Shards are leased so a conversation stays on the worker that holds its cached state;
    # a dead worker's shards (and pending requests) move to the others.
    leases = ShardLeases(redis, settings.redis, worker_id)
    lease_stop = asyncio.Event()
    leasing = asyncio.create_task(leases.run(consumer, lease_stop), name="leases")
    swaps = asyncio.create_task(
        _follow_swaps(settings, redis, scheduler, device, dtype), name="swaps"
    )
    if ready is not None:
        ready.set()
    try:
        await worker.run(stop)
    finally:
        lease_stop.set()
        await cancel_and_wait([swaps])
        await leasing


async def _follow_swaps(
    settings: Settings,
    redis: aioredis.Redis,
    scheduler: Scheduler,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Load each newly published version in the background; the scheduler swaps between steps."""
    registry = ModelRegistry(settings.models_dir)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.MODELS_CHANNEL)
    try:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            version = message["data"].decode()
            try:
                checkpoint = await asyncio.to_thread(
                    _load, registry.get(version).path, device, dtype
                )
            except ModelError as e:
                log.error("cannot swap to %s: %s", version, e)
                continue
            scheduler.swap(checkpoint)
            log.info("model %s loaded; swapping in between steps", version)
    finally:
        await pubsub.aclose()


@click.command("engine")
@click.pass_obj
def engine_command(settings: Settings) -> None:
    """Run one engine worker against the Redis at PARLEY_REDIS_URL."""
    from bot.cli import run_async
    from bot.redis import connect
    from bot.runtime import find_redis_url, stop_event_on_signals

    async def main() -> None:
        if settings.engine.metrics_port:
            prometheus_client.start_http_server(settings.engine.metrics_port)
            log.info("metrics on :%d/metrics", settings.engine.metrics_port)
        redis = await connect(find_redis_url(settings))
        try:
            await serve(settings, redis, stop_event_on_signals())
        finally:
            await redis.aclose()

    run_async(main())
