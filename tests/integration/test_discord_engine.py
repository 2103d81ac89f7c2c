"""Discord conversations answered by the real engine: a tiny seeded model on the CPU.

Local Discord → discord.py → adapter → Redis → engine worker (tiny GRU) → adapter → local
Discord. What the bot shows must be what the engine generated and logged for that request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot import keys, wire
from bot.queue import RequestConsumer
from bot.settings import EngineSettings, RedisSettings, SamplingSettings, Settings
from bot.wire import Exchange
from engine.checkpoint import Checkpoint
from engine.serve.scheduler import Scheduler
from engine.serve.worker import EngineWorker
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_harness import World, adapter_settings, build_world, running_adapter
from tests.fakes.discord_payloads import Message
from tests.unit.engine_fixtures import tiny_checkpoint

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with FakeDiscord() as fake:
        yield build_world(fake)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "gru", "gru")


def engine_settings(world: World, redis_settings: RedisSettings, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        redis=redis_settings,
        engine=EngineSettings(read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2),
        sampling=SamplingSettings(max_new_tokens=300, temperature=1.0),
        discord=adapter_settings(world),
    )


@contextlib.asynccontextmanager
async def running_engine(
    redis: aioredis.Redis, settings: Settings, ckpt: Checkpoint
) -> AsyncIterator[None]:
    scheduler = Scheduler(ckpt, settings.engine, settings.sampling, ckpt.model.device)
    consumer = RequestConsumer(redis, settings.redis, consumer="tiny")
    worker = EngineWorker(settings, redis, consumer, scheduler, "tiny")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def logged(redis: aioredis.Redis, request_id: str) -> Exchange:
    """The exchange the engine logs for ``request_id``, waiting (blocking XREAD) until it is.

    The engine logs it in the transaction that writes the reply's final event.
    """
    last = "0"
    async with asyncio.timeout(60):
        while True:
            for _, entries in await redis.xread({keys.LOG_STREAM: last}, block=1000) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    exchange = wire.decode_exchange(fields[keys.FIELD.encode()])
                    if exchange.request_id == request_id:
                        return exchange


def same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


async def final_reply(world: World, redis: aioredis.Redis, asked: Message) -> Message:
    """The bot's reply to ``asked`` once it shows all the engine generated for it."""
    fake = world.fake
    exchange = await logged(redis, f"discord-m-{asked.id}")

    def complete() -> bool:
        replies = fake.replies_to(asked)
        return bool(replies) and same_text(replies[0].text, exchange.reply)

    await fake.wait_for(complete)
    return fake.replies_to(asked)[0]


async def test_a_dm_and_a_mention_are_answered_by_the_model(
    world, redis, redis_settings, tmp_path, ckpt
) -> None:
    settings = engine_settings(world, redis_settings, tmp_path)
    fake = world.fake
    async with running_engine(redis, settings, ckpt), running_adapter(settings, redis):
        dm = await fake.dm(world.alice, "hello there")
        dm_reply = await final_reply(world, redis, dm)
        asked = await fake.say(world.bob, world.general, "how are you?", mention_bot=True)
        reply = await final_reply(world, redis, asked)
    for message, answer, user in ((dm, dm_reply, world.alice), (asked, reply, world.bob)):
        exchange = await logged(redis, f"discord-m-{message.id}")
        assert (exchange.platform, exchange.user) == ("discord", str(user.id))
        assert answer.reference == message.id and answer.allowed_mentions == {"parse": []}
        assert exchange.model_version == "gru"  # the checkpoint directory's name
    assert (await logged(redis, f"discord-m-{asked.id}")).prompt == "how are you?"
    assert (await logged(redis, f"discord-m-{dm.id}")).conversation == (
        f"discord:{dm.channel.id}:{world.alice.id}"
    )


async def test_a_streamed_reply_grows_by_edits_to_the_final_text(
    world, redis, redis_settings, tmp_path, ckpt
) -> None:
    settings = engine_settings(world, redis_settings, tmp_path)
    fake = world.fake
    async with running_engine(redis, settings, ckpt), running_adapter(settings, redis):
        asked = await fake.say(world.alice, world.general, "tell me everything", mention_bot=True)
        reply = await final_reply(world, redis, asked)
    exchange = await logged(redis, f"discord-m-{asked.id}")
    assert exchange.reply.strip() and same_text(reply.text, exchange.reply)
    # Each text the message showed was a beginning of the final one (it only ever grew).
    flat = [" ".join(t.split()) for t in reply.texts]
    assert all(flat[-1].startswith(shown) for shown in flat)
    assert len(set(flat)) == len(flat)  # an edit only when the text changed
    # The first delta (one token) is shown at once; the rest arrives by editing that message.
    assert reply.edits >= 1 and len(flat[0]) < len(flat[-1])
