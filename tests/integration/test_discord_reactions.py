"""Reactions as feedback on Discord, end to end: local Discord → discord.py → adapter → the
trainer's request stream → the real trainer service → the archive.

The reactions are put on after the adapter was restarted, so discord.py has none of the
reacted messages cached: the raw gateway events are what the adapter reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot import keys, wire
from bot.registry import ModelRegistry
from bot.settings import RedisSettings, Settings
from bot.trainer.service import TrainerService
from bot.wire import Exchange, Feedback
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_harness import World, adapter_settings, build_world, running_adapter
from tests.fakes.discord_payloads import Message, User

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as discord:
        yield discord


@pytest.fixture
def world(fake: FakeDiscord) -> World:
    return build_world(fake)


@pytest.fixture
def settings(world: World, redis_settings: RedisSettings, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, redis=redis_settings, discord=adapter_settings(world))


async def reply_to(fake: FakeDiscord, message: Message) -> Message:
    """The bot's reply to ``message`` once it shows the echo engine's whole answer."""
    await fake.wait_for(lambda: any(m.text.startswith("echo:") for m in fake.replies_to(message)))
    [reply] = fake.replies_to(message)
    return reply


async def trainer_messages(redis: aioredis.Redis, count: int) -> list[wire.TrainerMessage]:
    """The first ``count`` messages on the trainer's request stream, once they are there."""
    found: list[wire.TrainerMessage] = []
    last = "0"
    async with asyncio.timeout(30):
        while len(found) < count:  # each read blocks until an entry arrives
            response = await redis.xread({keys.TRAINER_REQUESTS: last}, block=1000)
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    found.append(wire.decode_trainer_message(fields[keys.FIELD.encode()]))
                    last = entry_id
    return found


def bot_user(fake: FakeDiscord, world: World) -> User:
    other = fake.add_user("otherbot")
    other.bot = True
    world.guild.members[other.id] = []
    return other


async def test_thumbs_on_a_reply_are_feedback_and_taking_them_off_withdraws_it(
    fake, world, settings, redis, echo_engine, tmp_path
) -> None:
    other_bot = bot_user(fake, world)
    async with running_adapter(settings, redis):
        asked = await fake.say(world.alice, world.general, "rate me", mention_bot=True)
        in_dm = await fake.dm(world.bob, "and me")
        slash = await fake.slash(world.carol, world.general, "chat", message="and /chat")
        reply, dm_reply = await reply_to(fake, asked), await reply_to(fake, in_dm)
        await fake.wait_for(lambda: any(m.text == "echo: and /chat" for m in fake.followups(slash)))
    [slash_reply] = fake.followups(slash)
    # (stopped once both replies finished; the new client has none of these messages cached)
    alice, bob, carol = world.alice, world.bob, world.carol
    async with running_adapter(settings, redis):
        # Not feedback: another bot's and the bot's own 👍, a 👍 on a message that is not a
        # reply of the bot, another emoji.
        assert await fake.react(other_bot, reply, "👍")
        assert await fake.react(fake.bot, reply, "👍")
        assert await fake.react(bob, asked, "👍")
        assert await fake.react(bob, reply, "🎉")
        await fake.react(alice, reply, "👍")  # +1
        await fake.react(alice, reply, "👎🏽")  # -1: the most recent one counts
        await fake.unreact(alice, reply, "👎🏽")  # +1: her 👍 is still there
        await fake.unreact(other_bot, reply, "👍")  # never counted: nothing to withdraw
        await fake.unreact(alice, reply, "👍")  # 0: none left
        await fake.react(carol, slash_reply, "👎")  # on a /chat answer: -1
        await fake.react(bob, dm_reply, "👍", burst=True)  # a super reaction in a DM: +1
        feedback = await trainer_messages(redis, 6)
    assert fake.withheld == []  # the adapter asked for both reaction intents
    served = {d.request.text: d.request.id for d in echo_engine.served}
    rid, dm_rid, slash_rid = served["rate me"], served["and me"], served["and /chat"]
    assert all(isinstance(f, Feedback) for f in feedback)
    assert [(f.request_id, f.value, f.platform, f.user) for f in feedback] == [  # type: ignore[union-attr]
        (rid, 1, "discord", str(alice.id)),
        (rid, -1, "discord", str(alice.id)),
        (rid, 1, "discord", str(alice.id)),
        (rid, 0, "discord", str(alice.id)),
        (slash_rid, -1, "discord", str(carol.id)),
        (dm_rid, 1, "discord", str(bob.id)),
    ]

    # The trainer service stores the last value with each archived exchange: only the DM
    # reply keeps a 👍, so only it is exported as a good reply.
    exchanges = [
        Exchange(rid, "c1", "discord", str(alice.id), "rate me", reply.text, "starter", 1_000),
        Exchange(dm_rid, "c2", "discord", str(bob.id), "and me", dm_reply.text, "starter", 2_000),
    ]
    for exchange in exchanges:  # as the engine logs them
        await redis.xadd(keys.LOG_STREAM, {keys.FIELD: wire.encode(exchange)})
    service = TrainerService(settings, redis, registry=ModelRegistry(settings.models_dir))
    await service.start()
    try:
        archived = 0
        while archived < len(exchanges):
            archived += await service.archiver.step(block_ms=100)
        handled = 0
        while handled < len(feedback):
            handled += await service.step(block_ms=100)
        good = await service.archive.call(lambda a: list(a.conversations(bot_replies="good")))
    finally:
        await service.close()
    texts = [m["text"] for c in good for m in c.record["messages"]]  # type: ignore[union-attr]
    assert texts == ["rate me", "and me", "echo: and me"]
