"""Replies owed by a Discord adapter process that is gone: a process killed (SIGKILL) after it
sent a message's request to the engine and before it posted the reply is followed by one with
the same adapter id, and the user gets exactly one reply (to their message), whether the
engine answered while no adapter ran or after the restart, and with the real engine (a tiny
seeded GRU) it is the reply the engine generated; a reply posted already is not posted
again; an owed ``/chat`` reply arrives as a plain message in its channel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from adapters.discord.owed import DiscordOwed, owed_replies
from bot import keys
from bot.settings import EngineSettings, RedisSettings, SamplingSettings, Settings
from engine.checkpoint import Checkpoint
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_harness import World, adapter_settings, build_world, running_adapter
from tests.integration.test_discord_engine import logged
from tests.integration.test_engine_roundtrip import running_engine
from tests.unit.engine_fixtures import tiny_checkpoint

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
ADAPTER_ID = "discord-adopt-test"
TTL_S = 60


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with FakeDiscord() as fake:
        yield build_world(fake)


def settings_for(world: World, redis_settings: RedisSettings, tmp_path: Path) -> Settings:
    discord = adapter_settings(world, adapter_id=ADAPTER_ID)
    return Settings(data_dir=tmp_path, redis=redis_settings, discord=discord)


async def adapter_process(
    world: World, redis_url: str, redis_settings: RedisSettings, data_dir: Path
) -> asyncio.subprocess.Process:
    """``parley adapter discord`` as its own process, with adapter id :data:`ADAPTER_ID`."""
    fake = world.fake
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(
        PARLEY_DATA_DIR=str(data_dir),
        PARLEY_REDIS__URL=redis_url,
        PARLEY_REDIS__SHARDS=str(redis_settings.shards),
        PARLEY_DISCORD__TOKEN=fake.token,
        PARLEY_DISCORD__API_BASE=fake.api_base,
        PARLEY_DISCORD__GATEWAY_URL=fake.gateway_url,
        PARLEY_DISCORD__GUILD_IDS=f"[{world.guild.id}]",
        PARLEY_DISCORD__GUILD_READY_TIMEOUT_S="0.05",
        PARLEY_DISCORD__ADAPTER_ID=ADAPTER_ID,
    )
    log = (data_dir / "adapter.log").open("wb")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "adapter", "discord", cwd=REPO, env=env,
            stdout=log, stderr=log,
        )  # fmt: skip
    finally:
        log.close()


@contextlib.asynccontextmanager
async def notified(redis: aioredis.Redis, key: str, command: str) -> AsyncIterator[asyncio.Event]:
    """An event set once Redis runs hash command ``command`` (``hset``, ``hdel``) on ``key``
    (a keyspace notification; the server's setting is restored afterwards)."""
    [old] = (await redis.config_get("notify-keyspace-events")).values()
    await redis.config_set("notify-keyspace-events", "Kh")
    pubsub = redis.pubsub()
    await pubsub.psubscribe(f"__keyspace@*__:{key}")
    await pubsub.get_message(timeout=5)  # the subscription is in place
    seen = asyncio.Event()

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "pmessage" and message["data"] == command.encode():
                seen.set()
                return

    task = asyncio.create_task(listen())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        await redis.config_set("notify-keyspace-events", old)


async def reply_written(redis: aioredis.Redis, adapter_id: str) -> None:
    """Until the reply stream of ``adapter_id`` holds an entry (a blocking read)."""
    response = await redis.xread({keys.reply_stream(adapter_id): "0-0"}, count=1, block=20_000)
    assert response, f"no reply written to {adapter_id} in 20 s"


@contextlib.asynccontextmanager
async def killed_once_owed(
    world: World, redis: aioredis.Redis, redis_url: str, redis_settings: RedisSettings, tmp: Path
) -> AsyncIterator[None]:
    """Run an adapter process; what the block does (a user writing) leaves a reply owed; then
    the process is killed (SIGKILL) with no engine having answered."""
    proc = await adapter_process(world, redis_url, redis_settings, tmp)
    try:
        await world.fake.wait_for(lambda: world.fake.identifies == 1, timeout_s=60)
        async with notified(redis, keys.discord_pending(ADAPTER_ID), "hset") as kept:
            yield
            async with asyncio.timeout(30):
                await kept.wait()
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


@pytest.mark.parametrize("engine_first", [True, False], ids=["engine-first", "restart-first"])
async def test_killed_before_the_reply_the_next_process_delivers_it_once(
    world, redis, redis_url, redis_settings, tmp_path, echo_engine_cls, engine_first
) -> None:
    fake = world.fake
    async with killed_once_owed(world, redis, redis_url, redis_settings, tmp_path):
        asked = await fake.say(world.alice, world.general, "still there?", mention_bot=True)
    assert fake.replies_to(asked) == []  # no engine ran: nothing was posted
    pending = owed_replies(redis, ADAPTER_ID, TTL_S)
    [owed] = await pending.load()
    assert (owed.channel_id, owed.message_id) == (world.general.id, asked.id)
    assert owed.request_id == f"discord-m-{asked.id}"

    settings = settings_for(world, redis_settings, tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        if engine_first:  # it answers into the dead process's reply stream
            engine = await stack.enter_async_context(echo_engine_cls(redis, redis_settings))
            await reply_written(redis, ADAPTER_ID)
        typed = len(fake.typing)
        await stack.enter_async_context(running_adapter(settings, redis))
        if not engine_first:  # typing in the channel: it took the reply over and waits
            await fake.wait_for(lambda: len(fake.typing) > typed)
            engine = await stack.enter_async_context(echo_engine_cls(redis, redis_settings))
        await fake.wait_for(lambda: len(fake.replies_to(asked)) == 1)
        then = await fake.say(world.alice, world.general, "and now?", mention_bot=True)
        await fake.wait_for(lambda: len(fake.replies_to(then)) == 1)
    assert [m.text for m in fake.bot_messages(world.general)] == [
        "echo: still there?",
        "echo: and now?",
    ]
    assert [m.reference for m in fake.bot_messages(world.general)] == [asked.id, then.id]
    assert [d.request.text for d in engine.served] == ["still there?", "and now?"]
    assert await pending.load() == []


async def test_a_reply_posted_already_is_not_posted_again(
    world, redis, redis_settings, tmp_path, echo_engine_cls
) -> None:
    fake = world.fake
    settings = settings_for(world, redis_settings, tmp_path)
    pending = owed_replies(redis, ADAPTER_ID, TTL_S)
    async with echo_engine_cls(redis, redis_settings), running_adapter(settings, redis):
        asked = await fake.say(world.alice, world.general, "only once", mention_bot=True)
        await fake.wait_for(lambda: len(fake.replies_to(asked)) == 1)
    assert await pending.load() == []  # delivered: no longer owed
    # As if the process had died after posting the reply and before marking it delivered:
    owed = DiscordOwed(
        request_id=f"discord-m-{asked.id}",
        reply_to=ADAPTER_ID,
        conversation=f"discord:{world.general.id}:{world.alice.id}",
        user=str(world.alice.id),
        channel_id=world.general.id,
        message_id=asked.id,
    )
    await pending.add(owed)
    async with (
        notified(redis, pending.key, "hdel") as settled,
        echo_engine_cls(redis, redis_settings),
        running_adapter(settings, redis),
    ):
        async with asyncio.timeout(30):
            await settled.wait()
        then = await fake.say(world.alice, world.general, "next", mention_bot=True)
        await fake.wait_for(lambda: len(fake.replies_to(then)) == 1)
    assert [m.text for m in fake.bot_messages(world.general)] == ["echo: only once", "echo: next"]
    assert await pending.load() == []


async def test_an_owed_chat_command_reply_arrives_as_a_plain_message_in_its_channel(
    world, redis, redis_url, redis_settings, tmp_path, echo_engine_cls
) -> None:
    fake = world.fake
    async with killed_once_owed(world, redis, redis_url, redis_settings, tmp_path):
        interaction = await fake.slash(world.bob, world.general, "chat", message="hello again")
    [owed] = await owed_replies(redis, ADAPTER_ID, TTL_S).load()
    assert (owed.channel_id, owed.message_id) == (world.general.id, None)
    settings = settings_for(world, redis_settings, tmp_path)
    async with echo_engine_cls(redis, redis_settings), running_adapter(settings, redis):
        await fake.wait_for(lambda: len(fake.bot_messages(world.general)) == 1)
    [sent] = fake.bot_messages(world.general)
    assert (sent.text, sent.reference) == ("echo: hello again", None)
    assert fake.followups(interaction) == []  # its token died with the process
    assert await owed_replies(redis, ADAPTER_ID, TTL_S).load() == []


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "gru", "gru")


async def test_the_real_engine_answers_a_dead_process_and_its_reply_is_posted_once(
    world, redis, redis_url, redis_settings, tmp_path, ckpt
) -> None:
    fake = world.fake
    async with killed_once_owed(world, redis, redis_url, redis_settings, tmp_path):
        asked = await fake.dm(world.alice, "are you still there?")
    settings = settings_for(world, redis_settings, tmp_path).model_copy(
        update={
            "engine": EngineSettings(read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2),
            "sampling": SamplingSettings(max_new_tokens=60, temperature=1.0),
        }
    )
    async with running_engine(redis, settings, ckpt, "tiny"):
        exchange = await logged(redis, f"discord-m-{asked.id}")  # into the dead one's stream
        async with running_adapter(settings, redis):

            def shown() -> bool:
                replies = fake.replies_to(asked)
                return bool(replies) and replies[0].text.split() == exchange.reply.split()

            await fake.wait_for(shown)
    assert exchange.prompt == "are you still there?"
    assert len(fake.bot_messages(asked.channel)) == 1
    assert await owed_replies(redis, ADAPTER_ID, TTL_S).load() == []
