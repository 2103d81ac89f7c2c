"""Bad input on Discord and Telegram: every nasty message (:mod:`tests.reliability.nasty`, and
text made by hypothesis) reaches the real adapter through the real client library (discord.py
against the local Discord, python-telegram-bot against the fake Bot API) and gets an answer
— the reply, or a short note saying why not (too long) — or is ignored by rule (no text); the
adapter keeps answering afterwards. The engine is the echo stand-in: this is about the
platforms' side."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.settings import RedisSettings, Settings
from tests.fakes import discord_harness, telegram_harness
from tests.fakes.discord import FakeDiscord
from tests.fakes.telegram_api import FakeBotAPI
from tests.fakes.telegram_harness import ALICE, handled, private
from tests.integration.conftest import EchoEngine
from tests.reliability.nasty import NASTY, any_text, draw

MESSAGES = {**NASTY, **{f"hypothesis-{i}": t for i, t in enumerate(draw(any_text(200), 15))}}
"""The corpus and hypothesis-made text (surrogates and control characters included)."""

pytestmark = pytest.mark.timeout(180)


async def test_discord_answers_every_nasty_message(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    async with FakeDiscord() as discord, EchoEngine(redis, redis_settings):
        world = discord_harness.build_world(discord)
        settings = Settings(
            data_dir=tmp_path, redis=redis_settings, discord=discord_harness.adapter_settings(world)
        )
        async with discord_harness.running_adapter(settings, redis):
            unanswered = []
            for name, text in MESSAGES.items():
                if not text.strip():
                    continue  # Discord does not send a message without text
                asked = await discord.dm(world.alice, text)
                try:
                    await discord.wait_for(lambda a=asked: bool(discord.replies_to(a)), 20)
                except (TimeoutError, AssertionError):
                    unanswered.append(name)
            last = await discord.dm(world.alice, "still there?")
            await discord.wait_for(lambda: bool(discord.replies_to(last)), 20)
    assert unanswered == []


async def test_telegram_answers_every_nasty_message(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    async with FakeBotAPI() as telegram, EchoEngine(redis, redis_settings):
        settings = telegram_harness.telegram_settings(telegram, redis_settings, tmp_path)
        async with telegram_harness.running_adapter(settings, redis):
            unanswered = []
            for name, text in MESSAGES.items():
                before = len(telegram.messages_in(ALICE.id))
                update = telegram.send_text(private(ALICE), ALICE, text)
                await handled(telegram, update)
                if not text.strip():
                    continue  # no text: ignored by rule
                try:
                    await telegram.wait_for(
                        lambda b=before: len(telegram.messages_in(ALICE.id)) > b, 20
                    )
                except (TimeoutError, AssertionError):
                    unanswered.append(name)
            before = len(telegram.messages_in(ALICE.id))
            telegram.send_text(private(ALICE), ALICE, "still there?")
            await telegram.wait_for(lambda: len(telegram.messages_in(ALICE.id)) > before, 20)
    assert unanswered == []
    assert telegram.violations == []
