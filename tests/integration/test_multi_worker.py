"""Two engine worker processes and one web adapter process on one Redis, as on several hosts.

The workers split the shards between them (leases); one is killed with SIGKILL while it is
generating replies; its shards and the requests it left pending move to the other worker
(reclaimed after ``redis.claim_idle_ms``), whose replies reach the same HTTP responses; the
conversations go on there; every request is answered exactly once (one ``done`` per response,
one logged exchange per request). Then the other worker is stopped as systemd stops it
(SIGTERM) while it generates: it drains, finishing every reply before it exits. Every process
is the real ``parley`` command, and each tells the test it serves through its systemd notify
socket.

The Redis is a server of the test's own (the embedded one ``parley run`` uses), so no other
test run's workers or model announcements reach these processes.

The model is tiny and untrained, with its special tokens' logits pushed down so that every
reply runs to ``max_new_tokens``: a reply lasts long enough for the kill to land mid-reply,
which the test checks (the killed worker's requests are still pending after it died).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import torch

from bot import keys, wire
from bot.embedded import EmbeddedRedis
from bot.redis import connect
from engine.checkpoint import save_checkpoint
from engine.models import build_model
from engine.tokenizer import train_char_tokenizer
from tests.unit.engine_fixtures import CONFIGS, CORPUS
from tests.unit.test_systemd_process import (
    ParleyProcess,
    engine_settings,
    free_port,
    parley_env,
    until,
)

pytestmark = pytest.mark.timeout(240)

SHARDS = 4
PER_SHARD = 2
"""Conversations per shard."""
MAX_NEW_TOKENS = 3000
"""Long enough that a reply is still streaming when a worker is killed or stopped (the tiny
GRU writes 300 tokens in about 0.1 s on a quiet machine)."""
STEP_S = 120.0
"""A bound on each wait, never an expectation (a loaded machine is slow, not wrong)."""
HOLDS = re.compile(r"worker (\S+) now holds shards \[([\d, ]*)\]")


def endless_checkpoint(directory: Path) -> Path:
    """A tiny GRU that never ends a reply by itself: special tokens get -50 in its head."""
    torch.manual_seed(0)
    tokenizer = train_char_tokenizer(CORPUS)
    model = build_model(CONFIGS["gru"].with_vocab(tokenizer.vocab_size))
    with torch.no_grad():
        for token in tokenizer.special_ids:
            model.lm_head.bias[token] = -50.0
    return save_checkpoint(
        directory, model, tokenizer, preset="test-endless", metrics={}, provenance={}
    )


def conversations_by_shard() -> dict[int, list[str]]:
    """``PER_SHARD`` web conversation ids for every shard."""
    found: dict[int, list[str]] = {s: [] for s in range(SHARDS)}
    n = 0
    while any(len(ids) < PER_SHARD for ids in found.values()):
        conversation = f"conv-{n:06d}"
        shard = keys.shard_for(f"web:{conversation}:{conversation}", SHARDS)
        if len(found[shard]) < PER_SHARD:
            found[shard].append(conversation)
        n += 1
    return found


@dataclass
class Reply:
    """One ``/api/chat`` response, as its Server-Sent Events arrived."""

    conversation: str
    deltas: int = 0
    done: list[dict[str, object]] = field(default_factory=list)
    errors: list[dict[str, object]] = field(default_factory=list)
    first_delta: asyncio.Event = field(default_factory=asyncio.Event)


async def chat(http: aiohttp.ClientSession, url: str, reply: Reply) -> Reply:
    body = {"conversation": reply.conversation, "text": "hello there"}
    async with http.post(f"{url}/api/chat", json=body) as response:
        assert response.status == 200, await response.text()
        event = None
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if event == "delta":
                    reply.deltas += 1
                    reply.first_delta.set()
                elif event == "done":
                    reply.done.append(data)
                elif event == "error":
                    reply.errors.append(data)
    return reply


def holdings(process: ParleyProcess) -> dict[str, set[int]]:
    """Each worker's shards as its latest "now holds shards" line in this log says."""
    held: dict[str, set[int]] = {}
    for line in process.lines:
        if match := HOLDS.search(line):
            held[match[1]] = {int(s) for s in match[2].split(",") if s.strip()}
    return held


async def pending_of(redis: aioredis.Redis, consumer: str) -> int:
    total = 0
    for shard in range(SHARDS):
        entries = await redis.xpending_range(
            keys.request_stream(shard), keys.ENGINE_GROUP, "-", "+", 100, consumername=consumer
        )
        total += len(entries)
    return total


async def exchanges_by_conversation(redis: aioredis.Redis) -> Counter[str]:
    entries = await redis.xrange(keys.LOG_STREAM)
    logged = [wire.decode_exchange(fields[keys.FIELD.encode()]) for _, fields in entries]
    assert len({e.request_id for e in logged}) == len(logged), "a request was logged twice"
    return Counter(e.conversation for e in logged)


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A Redis server for this test alone: shard leases, the engines' group and the models
    channel (Redis pub/sub ignores database numbers) must not meet another test run's."""
    async with EmbeddedRedis(tmp_path / "redis") as url:
        client = await connect(url)
        try:
            yield client, url
        finally:
            await client.aclose()


async def test_a_killed_worker_s_conversations_continue_on_the_other(
    own_redis: tuple[aioredis.Redis, str], tmp_path: Path
) -> None:
    redis, redis_url = own_redis
    model = endless_checkpoint(tmp_path / "endless")
    workdir = tmp_path / "work"
    workdir.mkdir()
    common = {
        "PARLEY_REDIS__SHARDS": str(SHARDS),
        "PARLEY_REDIS__CLAIM_IDLE_MS": "1000",
        "PARLEY_SAMPLING__MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
        "PARLEY_SAMPLING__MAX_NEW_TOKENS_LIMIT": str(MAX_NEW_TOKENS),
    }
    changed = asyncio.Condition()
    port = free_port()

    def engine(worker: str) -> ParleyProcess:
        settings = engine_settings(model, PARLEY_ENGINE__WORKER_ID=worker, **common)
        env = parley_env(workdir, redis_url, **settings)
        return ParleyProcess(["engine"], env, workdir, changed=changed)

    a, b = engine("worker-a"), engine("worker-b")
    web = ParleyProcess(
        ["adapter", "web", "--port", str(port)],
        parley_env(workdir, redis_url, **common),
        workdir,
        changed=changed,
    )
    fleet = [a, b, web]
    try:
        for process in fleet:
            await process.start()
        for process in fleet:
            await process.notified("READY")

        # The shards are split: each worker holds some, together all, none twice.
        def split() -> tuple[set[int], set[int]] | None:
            held_a = holdings(a).get("worker-a", set())
            held_b = holdings(b).get("worker-b", set())
            if held_a and held_b and not held_a & held_b and held_a | held_b == set(range(4)):
                return held_a, held_b
            return None

        shards_a, _ = await until(changed, split, STEP_S)
        leases = [await redis.get(keys.shard_lease(s)) for s in range(SHARDS)]
        assert {lease.decode() for lease in leases if lease} == {"worker-a", "worker-b"}

        by_shard = conversations_by_shard()
        on_a = [c for s in sorted(shards_a) for c in by_shard[s]]
        everyone = [c for s in range(SHARDS) for c in by_shard[s]]
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            first = {c: Reply(c) for c in everyone}
            calls = [asyncio.create_task(chat(http, url, first[c])) for c in everyone]
            # Kill worker A while it streams a reply to one of its conversations.
            waiting = [asyncio.create_task(first[c].first_delta.wait()) for c in on_a]
            async with asyncio.timeout(STEP_S):
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in waiting:
                task.cancel()
            a.signal(signal.SIGKILL)
            await a.wait()
            assert await pending_of(redis, "worker-a") > 0, "worker A died with nothing pending"

            async with asyncio.timeout(STEP_S):
                await asyncio.gather(*calls)
            # Worker B took every shard; the conversations go on there.
            await b.wait_for_line(r"worker worker-b now holds shards \[0, 1, 2, 3\]")
            second = {c: Reply(c) for c in everyone}
            async with asyncio.timeout(STEP_S):
                await asyncio.gather(*(chat(http, url, second[c]) for c in everyone))

        for reply in [*first.values(), *second.values()]:
            assert reply.errors == [], (reply.conversation, reply.errors)
            assert len(reply.done) == 1, (reply.conversation, reply.done)
            assert reply.done[0]["finish_reason"] == "length"
        # Exactly once: one logged exchange per request, two turns of history per exchange.
        logged = await exchanges_by_conversation(redis)
        assert logged == Counter({f"web:{c}:{c}": 2 for c in everyone})
        for c in everyone:
            assert await redis.llen(keys.history(f"web:{c}:{c}")) == 4
        assert await pending_of(redis, "worker-a") == 0
        assert await pending_of(redis, "worker-b") == 0

        # Stopped mid-reply (systemd's SIGTERM), worker B drains: it says STOPPING, finishes
        # the replies it is generating (no other worker is left to take them) and exits 0.
        third = {c: Reply(c) for c in everyone}
        async with aiohttp.ClientSession() as http:
            calls = [asyncio.create_task(chat(http, url, third[c])) for c in everyone]
            async with asyncio.timeout(STEP_S):
                await asyncio.gather(*(third[c].first_delta.wait() for c in everyone))
            b.signal(signal.SIGTERM)
            await b.notified("STOPPING")
            assert await pending_of(redis, "worker-b") > 0, "nothing was in flight at the stop"
            async with asyncio.timeout(STEP_S):
                await asyncio.gather(*calls)
        assert await b.wait() == 0, b.log()
        for reply in third.values():
            assert reply.errors == [], (reply.conversation, reply.errors)
            assert len(reply.done) == 1, (reply.conversation, reply.done)
        assert await exchanges_by_conversation(redis) == Counter(
            {f"web:{c}:{c}": 3 for c in everyone}
        )
        assert await pending_of(redis, "worker-b") == 0
    except BaseException:
        for process in fleet:
            print(process.log())
        raise
    finally:
        for process in fleet:
            await process.close()
