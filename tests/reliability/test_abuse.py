"""Abuse: admin commands from non-admins are refused and logged on every platform, and what
the bot says cannot be turned into a mass ping or rendered markup.

The platforms are the real adapters (discord.py against the local Discord, python-telegram-bot
against the fake Bot API, the web app on a TCP port). The engine is a stand-in answering with
hostile text through the real queue: a tiny model cannot be made to say ``@everyone`` on cue,
and what matters here is what each platform does with whatever the model says.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot import keys
from bot.settings import RedisSettings, Settings
from bot.wire import ChatRequest, Request
from tests.fakes import discord_harness, telegram_harness
from tests.fakes.discord import FakeDiscord
from tests.fakes.telegram_api import FakeBotAPI
from tests.fakes.telegram_harness import BOB, GROUP, private
from tests.integration.conftest import EchoEngine
from tests.integration.conftest_web import make_settings, serve

pytestmark = pytest.mark.timeout(120)

ADMIN_COMMANDS = ["retrain", "rollback", "model"]
HOSTILE = (
    "@everyone @here look <@&987654321098765432> [free nitro](https://evil.example) "
    "<b>bold</b> <a href='https://evil.example'>x</a> *emph* `code`"
)


def hostile(request: Request) -> str:
    return HOSTILE if isinstance(request, ChatRequest) else ""


def refusals(caplog: pytest.LogCaptureFixture, platform: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.getMessage().startswith("refused /")
        and f"from {platform} user" in r.getMessage()
    ]


async def test_non_admins_are_refused_and_logged_on_discord_and_telegram(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        FakeDiscord() as discord,
        FakeBotAPI() as telegram,
        EchoEngine(redis, redis_settings),
    ):
        world = discord_harness.build_world(discord)
        dc = Settings(
            data_dir=tmp_path,
            redis=redis_settings,
            discord=discord_harness.adapter_settings(world),
        )
        tg = telegram_harness.telegram_settings(telegram, redis_settings, tmp_path / "tg")
        async with (
            discord_harness.running_adapter(dc, redis),
            telegram_harness.running_adapter(tg, redis),
        ):
            for name in ADMIN_COMMANDS:
                interaction = await discord.slash(world.bob, world.general, name)
                await discord.wait_for(lambda i=interaction: bool(discord.followups(i)))
                followup = discord.followups(interaction)[0].text
                assert followup == f"Only this bot's admins can use /{name}.", followup
                for chat in (private(BOB), GROUP):
                    before = len(telegram.messages_in(chat.id))
                    telegram.send_text(chat, BOB, f"/{name}@{telegram.bot.username}")
                    await telegram.wait_for(
                        lambda c=chat, b=before: len(telegram.messages_in(c.id)) > b
                    )
                    answer = telegram.messages_in(chat.id)[-1].text
                    assert answer == f"Only this bot's admins can use /{name}.", answer
    assert await redis.exists(keys.TRAINER_REQUESTS) == 0  # nothing was asked of anyone
    assert len(refusals(caplog, "discord")) == len(ADMIN_COMMANDS)
    assert len(refusals(caplog, "telegram")) == 2 * len(ADMIN_COMMANDS)
    assert all(str(world.bob.id) in line for line in refusals(caplog, "discord"))
    assert all(str(BOB.id) in line for line in refusals(caplog, "telegram"))


async def test_the_web_admin_api_refuses_without_the_token(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, redis_settings, admin_token="the-admin-token-0123")
    async with serve(settings, redis) as url, aiohttp.ClientSession() as http:
        for path in ("/admin/api/retrain", "/admin/api/rollback"):
            for headers in ({}, {"Authorization": "Bearer guess"}, {"Authorization": "guess"}):
                async with http.post(f"{url}{path}", json={}, headers=headers) as response:
                    assert response.status == 401, (path, headers)
        async with http.get(f"{url}/admin/api/status") as response:
            assert response.status == 401
    assert await redis.exists(keys.TRAINER_REQUESTS) == 0


async def test_the_web_admin_api_logs_a_refused_attempt(
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path, redis_settings, admin_token="the-admin-token-0123")
    async with serve(settings, redis) as url, aiohttp.ClientSession() as http:
        headers = {"Authorization": "Bearer guess"}
        async with http.post(f"{url}/admin/api/retrain", json={}, headers=headers) as response:
            assert response.status == 401
    assert any("refused" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)


async def test_what_the_model_says_never_pings_or_renders_as_markup(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    async with (
        FakeDiscord() as discord,
        FakeBotAPI() as telegram,
        EchoEngine(redis, redis_settings, answer=hostile),
    ):
        world = discord_harness.build_world(discord)
        dc = Settings(
            data_dir=tmp_path,
            redis=redis_settings,
            discord=discord_harness.adapter_settings(world),
        )
        tg = telegram_harness.telegram_settings(telegram, redis_settings, tmp_path / "tg")
        async with (
            discord_harness.running_adapter(dc, redis),
            telegram_harness.running_adapter(tg, redis),
        ):
            asked = await discord.say(world.alice, world.chatty, "say something")
            await discord.wait_for(lambda: bool(discord.replies_to(asked)))
            telegram.send_text(private(BOB), BOB, "say something")
            await telegram.wait_for(lambda: bool(telegram.messages_in(BOB.id)))
        web = make_settings(tmp_path / "web", redis_settings)
        async with (
            EchoEngine(redis, redis_settings, answer=hostile, consumer="web-echo"),
            serve(web, redis) as url,
            aiohttp.ClientSession() as http,
        ):
            body = {"conversation": "abusepage01", "text": "say something"}
            async with http.post(f"{url}/api/chat", json=body) as response:
                page, page_type = await response.text(), response.content_type

    # Discord: never a ping (no allowed mentions, @everyone/@here broken)
    for reply in discord.replies_to(asked):
        assert reply.allowed_mentions is not None and reply.allowed_mentions.get("parse") == []
        assert "@everyone" not in reply.text and "@here" not in reply.text
    # Telegram: plain text, shown literally (no parse_mode, so no markup is rendered)
    assert telegram.violations == []
    assert telegram.messages_in(BOB.id)[-1].text == HOSTILE
    # The page: the text travels as data (the page puts it in textContent), never as HTML
    assert page_type == "text/event-stream" and json.dumps(HOSTILE)[1:-1] in page


async def test_a_masked_link_from_the_model_is_not_rendered_on_discord(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    async with FakeDiscord() as discord, EchoEngine(redis, redis_settings, answer=hostile):
        world = discord_harness.build_world(discord)
        dc = Settings(
            data_dir=tmp_path,
            redis=redis_settings,
            discord=discord_harness.adapter_settings(world),
        )
        async with discord_harness.running_adapter(dc, redis):
            asked = await discord.say(world.alice, world.chatty, "say something")
            await discord.wait_for(lambda: bool(discord.replies_to(asked)))
    assert "[free nitro](https://evil.example)" not in discord.replies_to(asked)[-1].text
