"""One user's conversation is never visible to another, across every platform at once.

A real engine (tiny model) serves the chat page, the OpenAI API (two keys, and the same
``user`` field under both), Discord (the real discord.py adapter against the local fake: DMs
and an answer channel two users share) and Telegram (python-telegram-bot against the fake Bot
API: private chats and a group). Users take turns in a random (seeded) order; every message
carries a token naming its sender. Then:

- each conversation's stored history (what the engine builds its next prompt from) holds the
  tokens of one sender only, and no sender's messages are in two conversations' histories
  except their own — the API's key and ``user`` scope it, Discord and Telegram the chat and
  the user;
- every logged exchange of a conversation comes from the same sender;
- every reply went to the chat the sender wrote in (Discord: a reply to their message;
  Telegram: their chat).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from bot import keys, wire
from bot.queue import RequestConsumer
from bot.settings import (
    EngineSettings,
    RedisSettings,
    SamplingSettings,
    Settings,
    WebSettings,
)
from engine.serve.scheduler import Scheduler
from engine.serve.worker import EngineWorker
from tests.fakes import discord_harness, telegram_harness
from tests.fakes.discord import FakeDiscord
from tests.fakes.telegram_api import FakeBotAPI
from tests.fakes.telegram_harness import ALICE, BOB, GROUP, private
from tests.integration.conftest_web import serve
from tests.unit.engine_fixtures import tiny_checkpoint

pytestmark = pytest.mark.timeout(240)

KEY_ONE, KEY_TWO = "sk-isolation-key-one", "sk-isolation-key-two"
TOKEN = re.compile(r"tok-([a-z0-9_-]+?)-\d+")
ROUNDS = 3


@contextlib.asynccontextmanager
async def engine(redis: aioredis.Redis, settings: Settings, tmp: Path) -> AsyncIterator[None]:
    ckpt = tiny_checkpoint(tmp / "tiny", "gru")
    scheduler = Scheduler(ckpt, settings.engine, settings.sampling, ckpt.model.device)
    consumer = RequestConsumer(redis, settings.redis, consumer="isolation")
    worker = EngineWorker(settings, redis, consumer, scheduler, "isolation")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_no_user_ever_sees_another_users_conversation(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    base = Settings(
        data_dir=tmp_path / "data",
        redis=redis_settings,
        engine=EngineSettings(read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2),
        sampling=SamplingSettings(max_new_tokens=4),
        web=WebSettings(api_keys=[KEY_ONE, KEY_TWO], rate_limit=None, global_rate_limit=None),
    )
    async with (
        FakeDiscord() as discord,
        FakeBotAPI() as telegram,
        engine(redis, base, tmp_path),
        serve(base, redis) as url,
        aiohttp.ClientSession() as http,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY_ONE, max_retries=0) as api_one,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY_TWO, max_retries=0) as api_two,
    ):
        world = discord_harness.build_world(discord)
        discord_settings = base.model_copy(
            update={"discord": discord_harness.adapter_settings(world)}
        )
        tg = telegram_harness.telegram_settings(telegram, redis_settings, tmp_path / "tg")
        telegram_settings = base.model_copy(update={"telegram": tg.telegram})
        async with (
            discord_harness.running_adapter(discord_settings, redis),
            telegram_harness.running_adapter(telegram_settings, redis),
        ):
            sent_by: dict[str, list[str]] = defaultdict(list)  # sender -> their messages
            misdelivered: list[str] = []

            async def page(sender: str, text: str) -> None:
                body = {"conversation": f"isolation{sender}", "text": text}
                async with http.post(f"{url}/api/chat", json=body) as response:
                    assert response.status == 200
                    await response.read()

            def api(
                client: openai.AsyncOpenAI, user: str | None
            ) -> Callable[[str], Awaitable[None]]:
                async def ask(text: str) -> None:
                    extra = {"user": user} if user else {}
                    await client.chat.completions.create(
                        model="parley", messages=[{"role": "user", "content": text}], **extra
                    )

                return ask

            def on_discord(user, channel):  # type: ignore[no-untyped-def]
                async def say(text: str) -> None:
                    message = await discord.say(user, channel, text, mention_bot=channel.type != 1)
                    await discord.wait_for(lambda: bool(discord.replies_to(message)))
                    for reply in discord.replies_to(message):
                        if reply.channel is not channel:
                            misdelivered.append(f"discord {text}")

                return say

            def on_telegram(user, chat):  # type: ignore[no-untyped-def]
                async def say(text: str) -> None:
                    before = len(telegram.messages_in(chat.id))
                    if chat.id == GROUP.id:
                        text = f"@{telegram.bot.username} {text}"
                    telegram.send_text(chat, user, text)
                    await telegram.wait_for(lambda: len(telegram.messages_in(chat.id)) > before)

                return say

            senders: dict[str, Callable[[str], Awaitable[None]]] = {
                "page_a": lambda t: page("aaaaaaaa", t),
                "page_b": lambda t: page("bbbbbbbb", t),
                "api1_x": api(api_one, "x"),
                "api2_x": api(api_two, "x"),  # the same user field under another key
                "api1_default": api(api_one, None),
                "dc_alice_dm": on_discord(world.alice, discord.dm_channel(world.alice)),
                "dc_bob_dm": on_discord(world.bob, discord.dm_channel(world.bob)),
                "dc_alice_chatty": on_discord(world.alice, world.chatty),
                "dc_bob_chatty": on_discord(world.bob, world.chatty),
                "tg_alice": on_telegram(ALICE, private(ALICE)),
                "tg_bob": on_telegram(BOB, private(BOB)),
                "tg_alice_group": on_telegram(ALICE, GROUP),
                "tg_bob_group": on_telegram(BOB, GROUP),
            }
            turns = [name for name in senders for _ in range(ROUNDS)]
            random.Random(16).shuffle(turns)
            counts: dict[str, int] = defaultdict(int)
            for name in turns:  # one at a time: each waits for its reply
                counts[name] += 1
                text = f"hello tok-{name}-{counts[name]}"
                sent_by[name].append(text)
                async with asyncio.timeout(60):
                    await senders[name](text)

    assert misdelivered == []
    # Who sent what each conversation's stored history holds.
    owners: dict[str, set[str]] = {}
    async for key in redis.scan_iter(match=keys.history("*")):
        turns_raw = await redis.lrange(key, 0, -1)
        user_turns = [wire.decode_turn(raw) for raw in turns_raw]
        found = {m for t in user_turns if t.role == "user" for m in TOKEN.findall(t.text)}
        owners[key.decode()] = found
    assert owners, "no history stored"
    assert all(len(found) == 1 for found in owners.values()), owners  # one sender each
    stored_senders = [next(iter(found)) for found in owners.values()]
    assert len(stored_senders) == len(set(stored_senders)), owners  # and one history each
    # The log agrees: every exchange of a conversation is from one sender.
    by_conversation: dict[str, set[str]] = defaultdict(set)
    for _id, fields in await redis.xrange(keys.LOG_STREAM):
        exchange = wire.decode_exchange(fields[keys.FIELD.encode()])
        by_conversation[exchange.conversation].update(TOKEN.findall(exchange.prompt))
    assert all(len(s) == 1 for s in by_conversation.values()), by_conversation
    assert {s for v in by_conversation.values() for s in v} == set(senders)
