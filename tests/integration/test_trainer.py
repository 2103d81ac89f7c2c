"""The trainer service against a real Redis: the log reaches the archive exactly once across a
crash, consent and chat settings decide what is archived, feedback lands on the reply, and
requests it cannot serve are answered with what went wrong."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot import keys, wire
from bot.archive import AsyncArchive
from bot.commands import Caller, Commands
from bot.queue import ParleyClient, cancel_and_wait
from bot.registry import ModelRegistry
from bot.settings import LearningSettings, RedisSettings, Settings
from bot.store import ConversationStore
from bot.trainer.client import TrainerClient, now_ms
from bot.trainer.ingest import LogArchiver
from bot.trainer.service import TrainerService
from bot.wire import Exchange, TrainerRequest

ADAPTER = "trainer-test"


def exchange(n: int, user: str = "u1", chat: str = "c1", platform: str = "discord") -> Exchange:
    return Exchange(
        request_id=f"r{n}",
        conversation=f"{platform}:{chat}:{user}",
        platform=platform,
        user=user,
        prompt=f"question {n}",
        reply=f"answer {n}",
        model_version="starter",
        created_ms=1_700_000_000_000 + n,
    )


async def log_exchanges(redis: aioredis.Redis, exchanges: list[Exchange]) -> None:
    for x in exchanges:
        await redis.xadd(keys.LOG_STREAM, {keys.FIELD: wire.encode(x)})


@pytest.fixture
def settings(tmp_path: Path, redis_settings: RedisSettings) -> Settings:
    return Settings(data_dir=tmp_path / "data", redis=redis_settings)


def archiver(
    redis: aioredis.Redis, archive: AsyncArchive, settings: Settings, consumer: str = "t1"
) -> LogArchiver:
    store = ConversationStore(redis, ttl_s=60)
    return LogArchiver(
        redis,
        archive,
        store,
        settings.learning,
        consumer=consumer,
        claim_idle_ms=settings.redis.claim_idle_ms,
    )


async def drain(archivers: LogArchiver, redis: aioredis.Redis) -> None:
    """Step until the log stream is empty and nothing is pending (bounded)."""
    for _ in range(50):
        pending = await redis.xpending(keys.LOG_STREAM, keys.TRAINER_GROUP)
        if await redis.xlen(keys.LOG_STREAM) == 0 and pending["pending"] == 0:
            return
        await archivers.step(block_ms=100)
    raise AssertionError("the log stream was not drained")


@pytest.mark.parametrize("same_name", [True, False], ids=["restarted", "replaced"])
async def test_the_log_reaches_the_archive_exactly_once_across_a_crash(
    redis: aioredis.Redis, settings: Settings, same_name: bool
) -> None:
    await log_exchanges(redis, [exchange(n) for n in range(10)])
    crashed_archive = AsyncArchive(settings.archive_file)
    crashed = archiver(redis, crashed_archive, settings, consumer="t1")
    await crashed.start()
    batch = await crashed.read()
    assert len(batch) == 10
    assert await crashed.store(batch) == 20
    await crashed_archive.close()  # the process died here: stored, never acknowledged

    archive = AsyncArchive(settings.archive_file)
    restarted = archiver(redis, archive, settings, consumer="t1" if same_name else "t2")
    await restarted.start()
    await log_exchanges(redis, [exchange(n) for n in range(10, 15)])
    await drain(restarted, redis)
    assert await archive.call(lambda a: a.total()) == 30  # 15 exchanges, each stored once
    await archive.close()


async def test_opted_out_users_and_other_chats_are_not_archived(
    redis: aioredis.Redis, settings: Settings
) -> None:
    learning = LearningSettings(archive_chats=["discord:c1"], archive_platforms=["discord"])
    settings = settings.model_copy(update={"learning": learning})
    await ConversationStore(redis, ttl_s=60).opt_out("u2")
    await log_exchanges(
        redis,
        [
            exchange(1, "u1", "c1"),
            exchange(2, "u2", "c1"),
            exchange(3, "u1", "c2"),
            exchange(4, "u1", "c1", platform="telegram"),
        ],
    )
    archive = AsyncArchive(settings.archive_file)
    ingest = archiver(redis, archive, settings)
    await ingest.start()
    await drain(ingest, redis)
    assert await archive.call(lambda a: a.count_user("u1")) == 2
    assert await archive.call(lambda a: a.total()) == 2
    await archive.close()


@contextlib.asynccontextmanager
async def trainer_running(
    redis: aioredis.Redis, settings: Settings, *, archiving: bool = True
) -> AsyncIterator[TrainerService]:
    """The trainer service; with ``archiving=False`` only its request loop runs, and the test
    drives the log archiver itself (``service.archiver``)."""
    service = TrainerService(settings, redis, registry=ModelRegistry(settings.models_dir))
    await service.start()

    async def serve_requests() -> None:
        while True:
            await service.step(block_ms=50)

    tasks = [asyncio.create_task(serve_requests())]
    if archiving:
        tasks.append(asyncio.create_task(service.archiver.run(asyncio.Event())))
    try:
        yield service
    finally:
        await cancel_and_wait(tasks)
        await service.close()


def caller(user: str, request_id: str, is_admin: bool = False) -> Caller:
    return Caller(
        platform="discord",
        user=user,
        conversation=f"discord:c1:{user}",
        request_id=request_id,
        reply_to=ADAPTER,
        is_admin=is_admin,
    )


async def test_optout_and_optin_decide_what_is_archived(
    redis: aioredis.Redis, settings: Settings
) -> None:
    async with (
        trainer_running(redis, settings, archiving=False) as service,
        ParleyClient(redis, settings.redis, ADAPTER) as client,
    ):
        commands = Commands(client, redis, service.registry)
        reply = await commands.run("optout", "", caller("u1", "m1"))
        assert "no longer archived" in reply
        await log_exchanges(redis, [exchange(1, "u1")])
        await drain(service.archiver, redis)
        reply = await commands.run("optin", "", caller("u1", "m2"))
        assert "archived and may be used for training again" in reply
        assert "once the trainer" not in reply  # the trainer answered: it is recorded
        await log_exchanges(redis, [exchange(2, "u1")])
        await drain(service.archiver, redis)
        exported = await service.archive.call(lambda a: list(a.conversations(bot_replies="never")))
    texts = [m["text"] for c in exported for m in c.record["messages"]]  # type: ignore[union-attr]
    assert texts == ["question 2"]  # r1 came while opted out: never archived


async def test_feedback_is_stored_with_the_reply(redis: aioredis.Redis, settings: Settings) -> None:
    async with (
        trainer_running(redis, settings, archiving=False) as service,
        ParleyClient(redis, settings.redis, ADAPTER) as client,
    ):
        commands = Commands(client, redis, service.registry)
        await log_exchanges(redis, [exchange(1, "u1"), exchange(2, "u1")])
        await drain(service.archiver, redis)
        await commands.feedback(caller("u2", "m1"), "r2", 1)
        await commands.feedback(caller("u2", "m2"), "r1", -1)
        # A consent request behind the feedback on the same stream: once it is answered,
        # the feedback before it has been applied.
        await commands.run("optin", "", caller("u9", "m3"))
        exported = await service.archive.call(lambda a: list(a.conversations(bot_replies="good")))
    texts = [m["text"] for c in exported for m in c.record["messages"]]  # type: ignore[union-attr]
    assert texts == ["question 1", "question 2", "answer 2"]


async def test_a_non_admins_retrain_is_refused_and_sends_nothing(
    redis: aioredis.Redis, settings: Settings
) -> None:
    async with ParleyClient(redis, settings.redis, ADAPTER) as client:
        commands = Commands(client, redis, ModelRegistry(settings.models_dir))
        answer = await commands.answer("retrain", "", caller("u1", "m1", is_admin=False))
    assert answer.text == "Only this bot's admins can use /retrain."
    assert answer.updates is None
    assert await redis.exists(keys.TRAINER_REQUESTS) == 0


async def test_a_stale_retrain_request_is_answered_not_run(
    redis: aioredis.Redis, settings: Settings
) -> None:
    old = TrainerRequest(id="old", command="retrain", created_ms=now_ms() - 2 * 3600 * 1000)
    await TrainerClient(redis).send(old)
    async with trainer_running(redis, settings):
        answers = [a async for a in TrainerClient(redis).answers("old", first_timeout_s=30)]
    assert len(answers) == 1 and "waited" in answers[0].message
    assert not (settings.data_dir / "runs").exists()


async def test_a_retrain_with_nothing_to_train_on_says_so(
    redis: aioredis.Redis, settings: Settings
) -> None:
    settings = settings.model_copy(update={"learning": LearningSettings(corpora=[])})
    async with (
        trainer_running(redis, settings),
        ParleyClient(redis, settings.redis, ADAPTER) as client,
    ):
        commands = Commands(client, redis, ModelRegistry(settings.models_dir))
        answer = await commands.answer("retrain", "", caller("admin", "m1", is_admin=True))
    assert "could not start" in answer.text and "no conversations" in answer.text
    assert answer.updates is None
    assert await redis.get(keys.TRAIN_LOCK) is None  # the next /retrain may start a job
