"""Benchmark of the queue alone: adapter XADD -> engine -> reply stream -> adapter.

The engine is a stub in its own process (as in production) that answers every request with
one ``Done`` at once, so the numbers are the queue's: its Redis round trips, encoding and
routing. Prints one JSON object:

- ``queue_p50_ms`` / ``queue_p99_ms``: latency of one request at a time (light load);
- ``queue_msgs_per_s``: requests answered per second with ``--concurrency`` in flight;
- ``ping_p50_ms``: a raw PING round trip on the same connection, the floor to compare with.

Usage: ``python -m bench.queue_overhead [--redis-url URL | --embedded] [--requests N]
[--concurrency C]``.
Without either it uses database 8 of the Redis on 127.0.0.1:6379 when that answers, else an
embedded server. It deletes only the keys it creates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from bot import keys
from bot.embedded import EmbeddedRedis
from bot.queue import Outgoing, ParleyClient, RequestConsumer
from bot.redis import Redis, connect
from bot.settings import RedisSettings
from bot.wire import ChatRequest, Done

DEFAULT_URL = "redis://127.0.0.1:6379/8"
ADAPTER_ID = "bench"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_url(given: str | None, embedded: bool) -> Iterator[str]:
    if given:
        yield given
    elif not embedded and _answers("127.0.0.1", 6379):
        yield DEFAULT_URL
    else:
        with tempfile.TemporaryDirectory() as data_dir, EmbeddedRedis(data_dir) as url:
            yield url


# -- the stub engine (its own process) -----------------------------------------------------------


async def stub_engine(url: str, settings: RedisSettings, ready: MpEvent, stop: MpEvent) -> None:
    redis = await connect(url)
    consumer = RequestConsumer(redis, settings, "bench-engine")
    await consumer.ensure_groups()
    ready.set()
    while not stop.is_set():
        deliveries = await consumer.read(count=512, block_ms=100)
        if deliveries:
            await consumer.write(
                [
                    Outgoing(
                        [Done(request_id=d.request.id, seq=0, text="ok")],
                        d.request.reply_to,
                        ack=d,
                    )
                    for d in deliveries
                ]
            )
    await redis.aclose()


def run_stub_engine(url: str, settings_json: str, ready: MpEvent, stop: MpEvent) -> None:
    settings = RedisSettings.model_validate_json(settings_json)
    asyncio.run(stub_engine(url, settings, ready, stop))


# -- the adapter side ------------------------------------------------------------------------------


def chat(n: int) -> ChatRequest:
    return ChatRequest(
        id=f"bench-{os.getpid()}-{n}",
        conversation=f"bench:{n % 997}",
        reply_to=ADAPTER_ID,
        text="hello there, how are you today?",
    )


def percentile_ms(samples_s: list[float], q: float) -> float:
    ordered = sorted(samples_s)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


async def ping_p50_ms(redis: Redis, n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await redis.ping()
        samples.append(time.perf_counter() - start)
    return percentile_ms(samples, 0.5)


async def sequential(client: ParleyClient, n: int, first: int) -> list[float]:
    samples = []
    for i in range(first, first + n):
        start = time.perf_counter()
        final = await client.reply(chat(i), timeout_s=10)
        samples.append(time.perf_counter() - start)
        assert isinstance(final, Done), final
    return samples


async def concurrent(client: ParleyClient, n: int, concurrency: int, first: int) -> float:
    counter = iter(range(first, first + n))

    async def worker() -> None:
        for i in counter:
            final = await client.reply(chat(i), timeout_s=30)
            assert isinstance(final, Done), final

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


async def cleanup(redis: Redis, settings: RedisSettings) -> None:
    names = [keys.reply_stream(ADAPTER_ID)]
    for shard in range(settings.shards):
        names += [keys.request_stream(shard), keys.dead_letter_stream(shard)]
    await redis.delete(*names)


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = RedisSettings(shards=args.shards, max_stream_len=100_000)
    redis = await connect(url)
    await cleanup(redis, settings)
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    engine = ctx.Process(
        target=run_stub_engine, args=(url, settings.model_dump_json(), ready, stop), daemon=True
    )
    engine.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the stub engine did not start")
        async with ParleyClient(redis, settings, ADAPTER_ID) as client:
            await sequential(client, 200, 0)  # warm up connections, scripts, caches
            latencies = await sequential(client, args.requests, 1_000_000)
            ping_ms = await ping_p50_ms(redis, args.requests)
            rate = await concurrent(client, args.throughput_requests, args.concurrency, 2_000_000)
    finally:
        stop.set()
        engine.join(10)
        if engine.is_alive():
            engine.terminate()
        await cleanup(redis, settings)
        await redis.aclose()
    p50 = percentile_ms(latencies, 0.5)
    return {
        "queue_p50_ms": p50,
        "queue_p90_ms": percentile_ms(latencies, 0.9),
        "queue_p99_ms": percentile_ms(latencies, 0.99),
        "queue_mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        "queue_msgs_per_s": round(rate),
        "ping_p50_ms": ping_ms,
        "p50_over_ping": round(p50 / ping_ms, 2) if ping_ms else None,
        "requests": args.requests,
        "throughput_requests": args.throughput_requests,
        "concurrency": args.concurrency,
        "shards": args.shards,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "redis": url.split("@")[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-url", default=None, help=f"default: {DEFAULT_URL} or embedded")
    parser.add_argument("--requests", type=int, default=2_000, help="sequential requests")
    parser.add_argument("--throughput-requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--embedded", action="store_true", help="use an embedded server")
    args = parser.parse_args(argv)
    with redis_url(args.redis_url, args.embedded) as url:
        result = asyncio.run(measure(url, args))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
