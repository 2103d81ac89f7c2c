"""bench/serving.py's end-to-end section: 64 users chatting through the web adapter (HTTP +
SSE), Redis and an engine worker in its own process, against the best bare scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import aiohttp
import torch
from aiohttp import web
from prometheus_client import CollectorRegistry

from bench import queue_overhead as queue_bench
from bench.baselines import (
    MESSAGE,
)
from bench.engine_runs import (
    Sizes,
    best_of,
    engine_tokens_per_s,
    on_threads,
    scheduler_for,
    torch_threads,
)
from bot.queue import RequestConsumer
from bot.redis import connect
from bot.registry import ModelRegistry
from bot.settings import EngineSettings, RedisSettings, SamplingSettings, Settings, WebSettings
from bot.wire import Sampling
from engine.checkpoint import Checkpoint, load_checkpoint
from engine.serve.metrics import EngineMetrics
from engine.serve.scheduler import Scheduler
from engine.serve.worker import EngineWorker

E2E_DB = 7
"""The database of the Redis on 127.0.0.1:6379 this section uses (flushed before and after)."""


# -- end to end: web adapter + Redis + engine worker ----------------------------------------------


def e2e_settings(url: str, data_dir: Path, new_tokens: int) -> Settings:
    return Settings(
        data_dir=data_dir,
        redis=RedisSettings(url=url, shards=4, max_stream_len=100_000),
        engine=EngineSettings(max_batch=64, read_block_ms=5),
        sampling=SamplingSettings(max_new_tokens=new_tokens),
        # The load generator is one client: per-client limits would measure the limiter.
        web=WebSettings(rate_limit=None, global_rate_limit=None),
    )


def engine_process(
    url: str, ckpt_dir: str, settings_json: str, threads: int, ready: MpEvent, stop: MpEvent
) -> None:
    """An engine worker serving the checkpoint until ``stop`` (its own process, as in prod)."""
    if threads:
        torch.set_num_threads(threads)
    settings = Settings.model_validate_json(settings_json)

    async def main() -> None:
        redis = await connect(url)
        ckpt = load_checkpoint(Path(ckpt_dir), device="cpu")
        scheduler = Scheduler(
            ckpt,
            settings.engine,
            settings.sampling,
            torch.device("cpu"),
            metrics=EngineMetrics("bench", CollectorRegistry()),
            ignore_eot=True,
        )
        consumer = RequestConsumer(redis, settings.redis, consumer="bench-engine")
        worker = EngineWorker(settings, redis, consumer, scheduler, "bench-engine")
        done = asyncio.Event()
        task = asyncio.create_task(worker.run(done))
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        done.set()
        await task
        await redis.aclose()

    asyncio.run(main())


async def chat_over_http(session: aiohttp.ClientSession, base: str) -> int:
    """One chat through POST /api/chat; the completion tokens of its ``done`` event."""
    body = {"conversation": uuid.uuid4().hex, "text": MESSAGE}
    async with session.post(f"{base}/api/chat", json=body) as response:
        response.raise_for_status()
        event = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("done", "error"):
                data = json.loads(line[6:])
                if event == "error":
                    raise RuntimeError(f"chat failed: {data}")
                return int(data["completion_tokens"])
    raise RuntimeError("the reply stream ended without a done event")


async def web_load(settings: Settings, n: int, concurrency: int) -> float:
    """Serve the web adapter here and chat ``n`` times, ``concurrency`` users at once."""
    from adapters.web.app import create_app  # the adapter needs no torch; imported late

    redis = await connect(settings.redis.url or "")
    app = create_app(
        settings, redis, adapter_id="bench-web", registry=ModelRegistry(settings.models_dir)
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    counter = iter(range(n))
    tokens = 0

    async def user(session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        for _ in counter:
            n = await chat_over_http(session, base)  # not `tokens += await`: that reads first
            tokens += n

    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await chat_over_http(session, base)  # warm up every path once
            start = time.perf_counter()
            await asyncio.gather(*(user(session) for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
    finally:
        await runner.cleanup()
        await redis.aclose()
    return tokens / elapsed


@contextlib.contextmanager
def e2e_redis(given: str | None) -> Iterator[str]:
    with queue_bench.redis_url(given, embedded=False) as url:
        if given is None and url == queue_bench.DEFAULT_URL:
            url = url.rsplit("/", 1)[0] + f"/{E2E_DB}"
        yield url


async def _flush(url: str) -> None:
    redis = await connect(url)
    await redis.flushdb()
    await redis.aclose()


def end_to_end(
    ckpt: Checkpoint, sizes: Sizes, redis_url: str | None, threads: int, repeats: int
) -> dict[str, Any]:
    with torch_threads(threads):
        return _end_to_end(ckpt, sizes, redis_url, threads, repeats)


def _end_to_end(
    ckpt: Checkpoint, sizes: Sizes, redis_url: str | None, threads: int, repeats: int
) -> dict[str, Any]:
    bare = scheduler_for(ckpt, sizes.e2e_new_tokens, None)
    default = Sampling()  # what the web page sends: the engine's default sampling
    load = (sizes.e2e_requests, sizes.concurrency)
    counts = list(range(1, (os.cpu_count() or 1) + 1))  # the bare engine's thread counts
    engine_tokens_per_s(bare, sizes.concurrency, sizes.concurrency, default)  # warm up
    with e2e_redis(redis_url) as url, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_flush(url))
        settings = e2e_settings(url, Path(tmp), sizes.e2e_new_tokens)
        ctx = mp.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        proc = ctx.Process(
            target=engine_process,
            args=(url, str(ckpt.path), settings.model_dump_json(), threads, ready, stop),
            daemon=True,
        )
        proc.start()
        try:
            if not ready.wait(120):
                raise SystemExit("the engine process did not start")
            *bare_tps, web_tps = best_of(
                repeats,
                *(on_threads(n, lambda: engine_tokens_per_s(bare, *load, default)) for n in counts),
                lambda: asyncio.run(web_load(settings, *load)),
            )
        finally:
            stop.set()
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
            asyncio.run(_flush(url))
    best = max(range(len(counts)), key=lambda i: bare_tps[i])
    same = bare_tps[counts.index(threads)] if threads in counts else None
    return {
        "e2e_fraction": round(web_tps / bare_tps[best], 3),
        "e2e_tokens_per_s": round(web_tps),
        "e2e_bare_engine_tokens_per_s": round(bare_tps[best]),
        "e2e_bare_engine_threads": counts[best],
        "e2e_bare_engine_by_threads": {
            str(n): round(t) for n, t in zip(counts, bare_tps, strict=True)
        },
        "e2e_fraction_same_threads": None if same is None else round(web_tps / same, 3),
        "e2e_model": ckpt.preset,
        "e2e_engine_threads": threads,
        "e2e_users": sizes.concurrency,
        "e2e_requests": sizes.e2e_requests,
        "e2e_new_tokens": sizes.e2e_new_tokens,
    }
