"""Soak: many users chatting at once with the whole system, counting every reply.

Starts a ``redis-server`` of its own (no persistence), one ``parley engine`` process serving a
tiny seeded GRU (untrained, so every reply runs to ``max_new_tokens``) and one
``parley adapter web`` process, then lets ``--users`` simulated users chat for
``--duration`` seconds, a quarter on each surface: the OpenAI-compatible API with the official
``openai`` client (streaming, each user its own ``user`` field), the chat page's ``/api/chat``
(Server-Sent Events, each user its own conversation), and Discord and Telegram: the local
protocol fakes with the real ``parley adapter discord`` and ``parley adapter telegram``
processes (:mod:`bench.soak_platforms`; ``--no-platforms``: the web half only). Each user sends
a message, reads the whole reply (on Discord and Telegram: waits for the bot's reply message),
pauses briefly and sends the next.

Every request is counted by what its user saw — exactly one final reply (``done``), a "busy"
answer (HTTP 429/503 or a ``busy`` error: backpressure), more than one final reply
(``duplicated``), or anything else: no final reply, a timeout, an internal error (``lost``) —
and checked against the engine's conversation log: each user must have exactly as many logged
exchanges as replies they saw (fewer is a loss; more is a duplicate, except for requests
already counted lost because their user saw an error or no final reply: the engine answered
and logged those but the answer never reached the user, one loss and not also a duplicate).

Prints one JSON object: ``users``, ``requests``, ``lost``, ``duplicated``, ``p50_ms``,
``p99_ms`` (request to final reply on the web, to the first reply message on Discord and
Telegram; answered requests), ``lost_reasons`` (why requests were counted lost: the error
code a web or API user saw instead of a reply, an HTTP status, an exception),
``busy_replies``, ``peak_rss_mb`` (the engine and adapter processes, summed, sampled),
``peak_redis_mb`` (``used_memory``, sampled), and ``throughput_per_s``; then the same users
for a third of the time past capacity (tight engine and stream limits, ``past_capacity``: the
same keys; ``--no-overload`` skips it); writes it with the commit, machine and date to
``bench/results/soak-cpu.json`` (``--quick``: ``soak-quick.json``). The driver shares the
machine's CPUs with the system it measures; ``load_average_at_start`` says how busy the
machine already was.

Usage: ``python bench/soak.py [--quick] [--users N] [--duration S] [--out DIR]
[--no-platforms] [--no-overload]``.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_root, os.environ.get("PYTHONPATH")]))
    os.execv(sys.executable, [sys.executable, "-m", "bench.soak", *sys.argv[1:]])

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
import torch

from bench.soak_platforms import Platforms
from bot import keys, wire
from engine.checkpoint import save_checkpoint
from engine.models import build_model
from engine.models.config import ModelConfig
from engine.tokenizer import train_char_tokenizer

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "soak-bench-key-0001"
CORPUS = [
    "<|user|>hello there<|eot|><|bot|>hi, how are you?<|eot|>",
    "<|user|>what did you do this weekend?<|eot|><|bot|>went hiking with friends<|eot|>",
]
MESSAGES = ["hello there", "how are you?", "what did you do this weekend?", "tell me more"]


@dataclass(frozen=True)
class Limits:
    """The system's bounds during a soak (small ones show backpressure engaging)."""

    max_batch: int = 64
    max_waiting: int = 256
    max_stream_len: int = 10_000
    max_new_tokens: int = 24


PAST_CAPACITY = Limits(max_batch=2, max_waiting=4, max_stream_len=20, max_new_tokens=200)
"""The second run: an engine that holds 6 requests and streams that hold 20, so most users
are past capacity and must be told "busy" at once."""


@dataclass
class Tally:
    """What the users saw."""

    outcomes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    replies: Counter[tuple[str, str]] = field(default_factory=Counter)  # (platform, user) -> seen
    unseen: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(platform, user) -> their requests counted lost with an error or no final reply (the
    engine may have answered and logged them all the same)."""
    lost_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())


# --- the system under test ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_model(directory: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = train_char_tokenizer(CORPUS)
    config = ModelConfig(arch="gru", n_embd=16, n_hidden=32, n_layer=1, block_size=64)
    model = build_model(config.with_vocab(tokenizer.vocab_size))
    with torch.no_grad():  # untrained: never end a reply early, so each costs its full length
        for token in tokenizer.special_ids:
            model.lm_head.bias[token] = -50.0
    return save_checkpoint(directory, model, tokenizer, preset="soak", metrics={}, provenance={})


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    args = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--save", "", "--appendonly", "no", "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


def parley_env(data_dir: Path, redis_url: str, settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update({"PARLEY_DATA_DIR": str(data_dir), "PARLEY_REDIS__URL": redis_url})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update({f"PARLEY_{k.upper()}": v for k, v in settings.items()})
    return env


@contextlib.contextmanager
def system(work: Path, limits: Limits) -> Iterator[tuple[str, str, list[int]]]:
    """Redis, an engine and the web adapter; yields (redis URL, web URL, their pids)."""
    with redis_server(work) as redis_port:
        url = f"redis://127.0.0.1:{redis_port}/0"
        web_port = free_port()
        common = {
            "redis__shards": "4",
            "redis__max_stream_len": str(limits.max_stream_len),
            "sampling__max_new_tokens": str(limits.max_new_tokens),
            "log_level": "WARNING",
        }
        engine_env = parley_env(work / "engine", url, {
            **common,
            "engine__model": str(tiny_model(work / "model")),
            "engine__max_batch": str(limits.max_batch),
            "engine__max_waiting": str(limits.max_waiting),
            "engine__dtype": "float32",
            "engine__heartbeat_s": "0.5",
        })  # fmt: skip
        web_env = parley_env(work / "web", url, {
            **common,
            "web__api_keys": json.dumps([API_KEY]),
            "web__rate_limit": "100000/minute",
            "web__global_rate_limit": "1000000/minute",
            "web__reply_timeout_s": "60",
        })  # fmt: skip
        cmd = [sys.executable, "-m", "bot.cli"]
        with (work / "engine.log").open("wb") as elog, (work / "web.log").open("wb") as wlog:
            engine = subprocess.Popen([*cmd, "engine"], env=engine_env, stdout=elog, stderr=elog)
            web = subprocess.Popen(
                [*cmd, "adapter", "web", "--port", str(web_port)],
                env=web_env,
                stdout=wlog,
                stderr=wlog,
            )
            try:
                yield url, f"http://127.0.0.1:{web_port}", [engine.pid, web.pid]
            finally:
                for proc in (web, engine):
                    proc.send_signal(signal.SIGTERM)
                for proc in (web, engine):
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()


async def wait_ready(web_url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{web_url}/readyz") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise SystemExit("the system did not become ready")
            await asyncio.sleep(0.2)


# --- the users --------------------------------------------------------------------------------


def classify_status(status: int, body: str) -> str:
    if status in (429, 503) and ("busy" in body or status == 429):
        return "busy"
    return "lost"


def count_status(tally: Tally, status: int, body: str) -> None:
    """A request answered with an HTTP error status instead of a stream."""
    outcome = classify_status(status, body)
    tally.outcomes[outcome] += 1
    if outcome == "lost":
        tally.lost_reasons[f"http_{status}"] += 1


async def page_user(http: aiohttp.ClientSession, web_url: str, n: int, tally: Tally) -> None:
    """One request of a chat-page user: SSE events until the stream ends."""
    conversation = f"soakpage{n:05d}"
    body = {"conversation": conversation, "text": random.choice(MESSAGES)}
    start = time.perf_counter()
    finals, errors = 0, []
    async with http.post(f"{web_url}/api/chat", json=body) as response:
        if response.status != 200:
            count_status(tally, response.status, await response.text())
            return
        event = ""
        async for raw in response.content:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("done", "error"):
                finals += 1
                if event == "error":
                    errors.append(json.loads(line[6:]).get("code"))
    record(tally, ("web", conversation), finals, errors, start)


async def api_user(client: Any, n: int, tally: Tally) -> None:
    """One request of an API user (official openai client, streaming)."""
    import openai

    user = f"soakapi{n:05d}"
    start = time.perf_counter()
    finals, errors = 0, []
    try:
        stream = await client.chat.completions.create(
            model="parley",
            messages=[{"role": "user", "content": random.choice(MESSAGES)}],
            stream=True,
            user=user,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason is not None:
                finals += 1
    except openai.APIStatusError as e:
        count_status(tally, e.status_code, str(e.body))
        return
    except openai.APIError as e:  # an error event inside the stream
        body = e.body if isinstance(e.body, dict) else {}
        errors.append("busy" if "busy" in str(e) else body.get("code") or "error")
        finals += 1
    record(tally, ("api", api_user_key(user)), finals, errors, start)


def record(
    tally: Tally, who: tuple[str, str], finals: int, errors: list[Any], start: float
) -> None:
    if finals > 1:
        tally.outcomes["duplicated"] += 1
    elif finals == 1 and not errors:
        tally.outcomes["done"] += 1
        tally.latencies_ms.append((time.perf_counter() - start) * 1000)
        tally.replies[who] += 1
    elif errors and errors[0] == "busy":
        tally.outcomes["busy"] += 1
    else:
        tally.outcomes["lost"] += 1
        tally.unseen[who] += 1
        tally.lost_reasons[str(errors[0]) if errors else "no_final_event"] += 1


async def platform_user(platforms: Platforms, n: int, tally: Tally, discord: bool) -> None:
    """One request of a Discord or Telegram user (through the fake and the adapter process)."""
    text = random.choice(MESSAGES)
    ask = platforms.ask_discord if discord else platforms.ask_telegram
    # n // 4: the n-th user of its platform (users take the four roles in turn), so no two
    # simulated users share one Discord account.
    outcome, took_s, who = await ask(n // 4, text)
    tally.outcomes[outcome] += 1
    if outcome == "done":
        tally.latencies_ms.append(took_s * 1000)
        tally.replies[who] += 1


def role(n: int, platforms: bool) -> str:
    """Users take turns: the API and the page, and Discord and Telegram when they run."""
    roles = ["page", "api", "discord", "telegram"] if platforms else ["page", "api"]
    return roles[n % len(roles)]


async def user_loop(
    n: int,
    web_url: str,
    until_s: float,
    tally: Tally,
    http: aiohttp.ClientSession,
    api: Any,
    platforms: Platforms | None,
) -> None:
    rng = random.Random(n)
    await asyncio.sleep(rng.uniform(0, 1.0))  # users arrive over a second, not in lockstep
    kind = role(n, platforms is not None)
    while time.monotonic() < until_s:
        try:
            if kind == "api":
                await api_user(api, n, tally)
            elif kind == "page":
                await page_user(http, web_url, n, tally)
            else:
                assert platforms is not None
                await platform_user(platforms, n, tally, discord=kind == "discord")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            tally.outcomes["lost"] += 1
            tally.lost_reasons[type(e).__name__] += 1
        await asyncio.sleep(rng.uniform(0.2, 1.0))


# --- sampling memory --------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def sample_peaks(pids: list[int], redis_url: str, peaks: dict[str, float]) -> None:
    client = redis.Redis.from_url(redis_url)
    while True:
        peaks["rss"] = max(peaks["rss"], sum(rss_mb(p) for p in pids))
        used = await asyncio.to_thread(lambda: client.info("memory")["used_memory"])
        peaks["redis"] = max(peaks["redis"], int(used) / 2**20)
        await asyncio.sleep(0.5)


# --- the run ----------------------------------------------------------------------------------


def logged_exchanges(redis_url: str) -> Counter[tuple[str, str]]:
    """Logged exchanges per (platform, user)."""
    client = redis.Redis.from_url(redis_url)
    found: Counter[tuple[str, str]] = Counter()
    for _id, fields in client.xrange(keys.LOG_STREAM):
        exchange = wire.decode_exchange(fields[keys.FIELD.encode()])
        found[(exchange.platform, exchange.user)] += 1
    return found


def api_user_key(user: str) -> str:
    """The ``user`` the API gives the engine for this ``user`` field under our key."""
    from adapters.web.openai_api import key_scope

    return f"api:{key_scope(API_KEY)}:{user}"


async def drive(  # type: ignore[no-untyped-def]
    users: int,
    duration_s: float,
    web_url: str,
    redis_url: str,
    pids: list[int],
    platforms: Platforms | None,
):
    import httpx
    import openai

    tally = Tally()
    peaks = {"rss": 0.0, "redis": 0.0}
    sampler = asyncio.create_task(sample_peaks(pids, redis_url, peaks))
    limits = httpx.Limits(max_connections=users + 10, max_keepalive_connections=users + 10)
    connector = aiohttp.TCPConnector(limit=users + 10)
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        openai.AsyncOpenAI(
            base_url=f"{web_url}/v1",
            api_key=API_KEY,
            max_retries=0,
            timeout=120,
            http_client=httpx.AsyncClient(limits=limits, timeout=120),
        ) as api,
    ):
        started = time.monotonic()
        until_s = started + duration_s
        await asyncio.gather(
            *(user_loop(n, web_url, until_s, tally, http, api, platforms) for n in range(users))
        )
        elapsed_s = time.monotonic() - started
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    return tally, peaks, elapsed_s


def check_log(tally: Tally, redis_url: str) -> tuple[int, int]:
    """(lost, duplicated) by the engine's log: conversations whose logged exchanges differ
    from the replies their user saw. An exchange logged for a request that its user saw fail
    (already counted lost) is that loss, not a duplicate."""
    logged = logged_exchanges(redis_url)
    seen = tally.replies
    lost = sum(max(0, seen[c] - logged[c]) for c in seen)
    duplicated = sum(max(0, logged[c] - seen[c] - tally.unseen[c]) for c in logged)
    return lost, duplicated


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def run_users(
    work: Path,
    users: int,
    duration_s: float,
    limits: Limits,
    urls: tuple[str, str],
    pids: list[int],
    platforms: bool,
) -> tuple[Tally, dict[str, float], float, int]:
    """The users' run, with the platform fakes and adapters when ``platforms``; returns the
    tally, peaks, elapsed seconds and platform replies seen twice."""
    redis_url, web_url = urls
    await wait_ready(web_url)
    if not platforms:
        tally, peaks, elapsed_s = await drive(users, duration_s, web_url, redis_url, pids, None)
        return tally, peaks, elapsed_s, 0

    def env(name: str, settings: dict[str, str]) -> dict[str, str]:
        common = {"redis__shards": "4", "redis__max_stream_len": str(limits.max_stream_len)}
        return parley_env(work / name, redis_url, {**common, "log_level": "WARNING", **settings})

    counts = Counter(role(n, True) for n in range(users))
    async with Platforms(work, env, counts["discord"] or 1, counts["telegram"] or 1) as fakes:
        tally, peaks, elapsed_s = await drive(
            users, duration_s, web_url, redis_url, [*pids, *fakes.pids], fakes
        )
        return tally, peaks, elapsed_s, fakes.duplicated()


def soak(
    users: int, duration_s: float, limits: Limits = Limits(), *, platforms: bool = False
) -> dict[str, Any]:
    """Run one soak and return its figures (``platforms``: Discord and Telegram users too)."""
    with tempfile.TemporaryDirectory(prefix="parley-soak-") as tmp:
        work = Path(tmp)
        with system(work, limits) as (redis_url, web_url, pids):
            tally, peaks, elapsed_s, platform_duplicated = asyncio.run(
                run_users(work, users, duration_s, limits, (redis_url, web_url), pids, platforms)
            )
            log_lost, log_duplicated = check_log(tally, redis_url)
    return {
        "users": users,
        "duration_s": round(elapsed_s, 1),
        "requests": tally.requests,
        "answered": tally.outcomes["done"],
        "lost": tally.outcomes["lost"] + log_lost,
        "duplicated": tally.outcomes["duplicated"] + log_duplicated + platform_duplicated,
        "busy_replies": tally.outcomes["busy"],
        "lost_reasons": dict(tally.lost_reasons),
        "throughput_per_s": round(tally.outcomes["done"] / max(elapsed_s, 1e-9), 1),
        "p50_ms": round(percentile(tally.latencies_ms, 50), 1),
        "p99_ms": round(percentile(tally.latencies_ms, 99), 1),
        "peak_rss_mb": round(peaks["rss"], 1),
        "peak_redis_mb": round(peaks["redis"], 2),
        "limits": limits.__dict__,
        "surfaces": ["api", "page", *(["discord", "telegram"] if platforms else [])],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--quick", action="store_true", help="10 users for 5 s")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument(
        "--no-overload", action="store_true", help="skip the run past capacity (tight limits)"
    )
    parser.add_argument(
        "--no-platforms", action="store_true", help="web users only (no Discord or Telegram)"
    )
    args = parser.parse_args(argv)
    users, duration_s = (10, 5.0) if args.quick else (args.users, args.duration)
    load_at_start = os.getloadavg()[0]
    platforms = not args.no_platforms
    figures = soak(users, duration_s, platforms=platforms)
    if not args.no_overload:
        figures["past_capacity"] = soak(users, duration_s / 3, PAST_CAPACITY, platforms=platforms)
    figures["quick"] = args.quick
    figures["load_average_at_start"] = round(load_at_start, 2)
    figures["note"] = (
        "driver, engine, adapter and Redis share this machine's CPUs with each other "
        "(and with whatever else ran: see load_average_at_start)"
    )
    from bench.report import RESULTS, save_result

    save_result("soak-quick" if args.quick else "soak-cpu", figures, args.out or RESULTS)
    print(json.dumps(figures))
    runs = [figures, figures.get("past_capacity", {})]
    clean = all(run.get("lost", 0) == 0 and run.get("duplicated", 0) == 0 for run in runs)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
