"""The learning loop end to end on one machine: a real engine (engine.service.serve), the real
trainer service with its retrain child process, a real Redis, and the chat commands.

An admin's /retrain is a request to the trainer; a better model is published and served by
the running engine with no request lost; one that is not better, or a job that crashes,
leaves the live model serving and the admin told why; two /retrains make one job; /forget
leaves nothing of the user anywhere. Models are tiny, seeded and on the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from bot import keys, wire
from bot.archive import Archive
from bot.commands import Caller, Commands
from bot.queue import ParleyClient, cancel_and_wait
from bot.registry import ModelRegistry
from bot.settings import EngineSettings, LearningSettings, RedisSettings, Settings
from bot.store import ConversationStore
from bot.trainer.client import TrainerClient, now_ms
from bot.trainer.service import TrainerService
from bot.wire import ChatRequest, Done, JobUpdate, ReplyEvent, Sampling, TrainerRequest
from engine import service as engine_service
from tests.unit.engine_fixtures import tiny_checkpoint

ADAPTER = "learning-test"
SAMPLING = Sampling(temperature=1.0, seed=3, max_new_tokens=8)
PAIRS = [
    ("hello there", "hi, how are you?"),
    ("what did you do this weekend?", "went hiking with friends"),
    ("hello again", "hi there, nice to see you"),
    ("how are you?", "good, thanks, and you?"),
]


def write_corpus(path: Path, n: int = 48) -> Path:
    """A small repetitive corpus a tiny model learns something from in a few dozen steps."""
    with path.open("w") as f:
        for i in range(n):
            asked, answered = PAIRS[i % len(PAIRS)]
            messages = [
                {"author": f"a{i}", "text": asked},
                {"author": f"b{i}", "text": answered},
                {"author": f"a{i}", "text": asked},
                {"author": f"b{i}", "text": answered},
            ]
            f.write(json.dumps({"id": f"corpus:{i}", "messages": messages}) + "\n")
    return path


def make_settings(tmp_path: Path, redis_settings: RedisSettings, **learning: object) -> Settings:
    learning_settings = {
        "corpora": [str(write_corpus(tmp_path / "corpus.jsonl"))],
        "max_steps": 24,
        "budget_s": 300.0,
        "progress_interval_s": 0.5,
        "val_fraction": 0.25,
        "bot_replies": "good",
        **learning,
    }
    return Settings(
        data_dir=tmp_path / "data",
        redis=redis_settings,
        engine=EngineSettings(
            read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2, max_batch=8, dtype="float32"
        ),
        learning=LearningSettings(**learning_settings),  # type: ignore[arg-type]
    )


@dataclass
class System:
    settings: Settings
    redis: aioredis.Redis
    client: ParleyClient
    commands: Commands
    trainer: TrainerService
    registry: ModelRegistry

    async def chat(self, request_id: str, user: str, text: str) -> list[ReplyEvent]:
        request = ChatRequest(
            id=request_id,
            conversation=f"discord:c1:{user}",
            reply_to=ADAPTER,
            text=text,
            user=user,
            platform="discord",
            sampling=SAMPLING,
            created_ms=now_ms(),
        )
        return [e async for e in self.client.stream(request, timeout_s=60)]

    async def archived(self, user: str) -> int:
        return await self.trainer.archive.call(lambda a: a.count_user(user))


def admin(request_id: str) -> Caller:
    return Caller("discord", "admin", "discord:c1:admin", request_id, ADAPTER, is_admin=True)


def live_checkpoint(settings: Settings, tmp_path: Path) -> ModelRegistry:
    """An untrained tiny model published as v0001 and made live."""
    registry = ModelRegistry(settings.models_dir)
    tiny_checkpoint(tmp_path / "tiny", "gpt", seed=0)
    registry.set_live(registry.add(tmp_path / "tiny").version)
    return registry


@contextlib.asynccontextmanager
async def running(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path, *, archiving: bool = True
) -> AsyncIterator[System]:
    """Engine, trainer service, client and commands; with ``archiving=False`` the trainer's
    log archiver does not run on its own and the test drains the log (:func:`drain`)."""
    registry = live_checkpoint(settings, tmp_path)
    stop, engine_ready = asyncio.Event(), asyncio.Event()
    engine = asyncio.create_task(engine_service.serve(settings, redis, stop, ready=engine_ready))
    waiter = asyncio.create_task(engine_ready.wait())
    await asyncio.wait({engine, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if engine.done():
        waiter.cancel()
        engine.result()
    trainer = TrainerService(settings, redis, registry=registry)
    await trainer.start()

    async def serve_requests() -> None:
        while True:
            await trainer.step(block_ms=50)

    tasks = [asyncio.create_task(serve_requests())]
    if archiving:
        tasks.append(asyncio.create_task(trainer.archiver.run(stop)))
    try:
        async with ParleyClient(redis, settings.redis, ADAPTER) as client:
            commands = Commands(client, redis, registry)
            yield System(settings, redis, client, commands, trainer, registry)
    finally:
        stop.set()
        await cancel_and_wait(tasks)
        await trainer.close()
        await asyncio.wait_for(engine, 60)


async def drain(system: System) -> None:
    """Archive everything in the log stream now (bounded)."""
    for _ in range(50):
        pending = await system.redis.xpending(keys.LOG_STREAM, keys.TRAINER_GROUP)
        if await system.redis.xlen(keys.LOG_STREAM) == 0 and pending["pending"] == 0:
            return
        await system.trainer.archiver.step(block_ms=50)
    raise AssertionError("the log stream was not drained")


async def retrain(system: System, request_id: str) -> tuple[str, list[str]]:
    """/retrain as an admin; its first reply and every later update."""
    answer = await system.commands.answer("retrain", "", admin(request_id))
    updates = [u async for u in answer.updates] if answer.updates else []
    return answer.text, updates


async def test_a_better_model_is_published_and_served_with_no_request_lost(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, redis_settings)
    async with running(settings, redis, tmp_path) as system:
        for i, (asked, _) in enumerate(PAIRS):  # logged exchanges, the replies rated good
            events = await system.chat(f"warm-{i}", f"u{i}", asked)
            assert isinstance(events[-1], Done) and events[-1].model_version == "v0001"
            await system.commands.feedback(admin(f"fb-{i}"), f"warm-{i}", 1)

        answered: dict[str, list[ReplyEvent]] = {}
        swapped = asyncio.Event()

        async def load() -> None:
            """Chat without pause until a reply comes from the new model."""
            n = 0
            while not swapped.is_set():
                events = await system.chat(f"load-{n}", f"w{n % 3}", "hello there")
                answered[f"load-{n}"] = events
                final = events[-1]
                if isinstance(final, Done) and final.model_version == "v0002":
                    swapped.set()
                n += 1

        loader = asyncio.create_task(load())
        first, updates = await retrain(system, "retrain-1")
        await asyncio.wait_for(swapped.wait(), 120)
        await loader

    assert first.startswith("Retrain retrain-1 starting: retraining on ")
    assert any(u.startswith("Retraining") for u in updates)
    assert updates[-1].startswith("Published: v0002 is live: on the ")
    assert system.registry.live().version == "v0002"
    provenance = system.registry.get("v0002").provenance
    assert provenance["archive"]["messages"] > 0 and provenance["archive"]["platforms"] == [
        "discord"
    ]
    for events in answered.values():  # every request answered once, none lost or failed
        finals = [e for e in events if wire.is_final(e)]
        assert len(finals) == 1 and isinstance(finals[0], Done)


async def test_a_model_that_is_not_better_is_not_published(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, redis_settings, min_improvement=0.99)
    async with running(settings, redis, tmp_path) as system:
        _, updates = await retrain(system, "retrain-1")
        events = await system.chat("after", "u1", "hello there")
    assert updates[-1].startswith("Not published: on the ")
    assert "needed below -99.0%" in updates[-1]
    assert "v0001 stays live" in updates[-1]
    assert system.registry.live().version == "v0001"
    assert [v.version for v in system.registry.published()] == ["v0001"]
    assert isinstance(events[-1], Done) and events[-1].model_version == "v0001"


async def test_a_crashing_retrain_leaves_the_live_model_and_tells_the_admin(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, redis_settings, corpora=[str(tmp_path / "missing.jsonl")])
    async with running(settings, redis, tmp_path) as system:
        _, updates = await retrain(system, "retrain-1")
        events = await system.chat("after", "u1", "hello there")
        progress = wire.decode_trainer_answer(await redis.get(keys.TRAIN_PROGRESS) or b"")
    assert updates[-1].startswith("Retrain retrain-1 failed: the training process failed:")
    assert "missing.jsonl" in updates[-1] and "v0001 keeps serving" in updates[-1]
    assert isinstance(progress, JobUpdate) and progress.status == "failed"
    assert system.registry.live().version == "v0001"
    assert isinstance(events[-1], Done) and events[-1].model_version == "v0001"


async def test_two_retrains_at_once_make_one_job(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, redis_settings)
    client = TrainerClient(redis)
    for rid in ("first", "second"):  # both waiting before the trainer reads either
        await client.send(TrainerRequest(id=rid, command="retrain", created_ms=now_ms()))
    async with running(settings, redis, tmp_path):
        finals = {}
        for rid in ("first", "second"):
            answers = [a async for a in client.answers(rid, first_timeout_s=60)]
            finals[rid] = answers[-1]
            assert isinstance(answers[0], JobUpdate) and answers[0].job_id == "first"
    assert all(
        isinstance(f, JobUpdate) and f.final and f.job_id == "first" for f in finals.values()
    )
    assert len(list((settings.data_dir / "runs").iterdir())) == 1


async def test_forget_leaves_nothing_of_the_user(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, redis_settings)
    async with running(settings, redis, tmp_path, archiving=False) as system:
        for i in range(3):
            await system.chat(f"gone-{i}", "gone", f"my secret number {i}")
            await system.chat(f"stay-{i}", "stay", f"keep this {i}")
        await drain(system)
        assert await system.archived("gone") == 6  # 3 messages and the 3 replies to them
        await system.chat("gone-late", "gone", "one more secret")  # still in the log

        caller = Caller("discord", "gone", "discord:c1:gone", "forget-1", ADAPTER)
        reply = await system.commands.run("forget", "", caller)

        store = ConversationStore(redis, ttl_s=60)
        assert (await store.history("discord:c1:gone")) == ()
        assert await redis.exists(keys.state("discord:c1:gone")) == 0
        assert await store.is_opted_out("gone")
        assert await system.archived("gone") == 0
        log = await redis.xrange(keys.LOG_STREAM)
        assert not any(b"secret" in fields[keys.FIELD.encode()] for _, fields in log)

        await system.chat("gone-after", "gone", "a secret after forgetting")
        await system.chat("stay-after", "stay", "still here")
        await drain(system)
        assert await system.archived("gone") == 0  # an opted-out user is never archived
        export = tmp_path / "next.jsonl"
        opted_out = await store.opted_out_users()
        await system.trainer.archive.call(lambda a: a.export(export, exclude_users=opted_out))
    assert reply.startswith("Done — I deleted your conversation history")
    assert "from the archive I deleted 3 archived message(s) of yours" in reply
    assert "and 1 waiting log entries" in reply
    text = export.read_text()
    assert "secret" not in text and "keep this 0" in text and "still here" in text
    with Archive(settings.archive_file) as archive:
        assert archive.count_user("gone") == 0


async def test_a_damaged_version_is_refused_and_the_live_one_keeps_serving(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, redis_settings)
    async with running(settings, redis, tmp_path, archiving=False) as system:
        tiny_checkpoint(tmp_path / "second", "gpt", seed=1)
        damaged = system.registry.add(tmp_path / "second")
        weights = damaged.path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-16] + bytes(16))  # same size, other bytes
        tiny_checkpoint(tmp_path / "third", "gpt", seed=2)
        good = system.registry.add(tmp_path / "third")
        # A publisher elsewhere announces the damaged copy, then a good version: the engine
        # takes them in order, so a reply from the good one means the damaged one was seen.
        await redis.publish(keys.MODELS_CHANNEL, damaged.version)
        system.registry.set_live(good.version)
        await system.registry.announce(redis, good.version)
        served = []
        for n in range(200):
            events = await system.chat(f"probe-{n}", "u1", "hello there")
            final = events[-1]
            assert isinstance(final, Done)
            served.append(final.model_version)
            if final.model_version == good.version:
                break
        reply = await system.commands.run("rollback", damaged.version, admin("rb-1"))
    assert served[-1] == good.version and damaged.version not in served
    assert "does not match its checksum" in reply
    assert system.registry.live().version == good.version
