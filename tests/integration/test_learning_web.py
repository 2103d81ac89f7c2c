"""The web page's side of the learning loop over real HTTP: a reply's ``done`` event names its
request, 👍/👎 on it reach the archived exchange, and /api/forget runs /forget (engine and
archive) and says what it deleted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from conftest_web import StreamingEngine, engine, make_settings, reply_for, serve
from test_web_browser import PHONE, TIMEOUT_MS, browser

from bot import keys, model_admin, wire
from bot.queue import cancel_and_wait
from bot.registry import ModelRegistry
from bot.settings import RedisSettings, Settings
from bot.trainer.service import TrainerService
from bot.wire import Exchange

__all__ = ["browser", "engine"]  # the fixtures, imported so pytest finds them


@pytest.fixture
def settings(tmp_path: Path, redis_settings: RedisSettings) -> Settings:
    return make_settings(tmp_path, redis_settings)


@pytest.fixture
async def trainer(redis: aioredis.Redis, settings: Settings) -> AsyncIterator[TrainerService]:
    """The trainer's request loop; the test drains the log itself."""
    service = TrainerService(settings, redis, registry=ModelRegistry(settings.models_dir))
    await service.start()

    async def serve_requests() -> None:
        while True:
            await service.step(block_ms=50)

    task = asyncio.create_task(serve_requests())
    yield service
    await cancel_and_wait([task])
    await service.close()


async def chat(http: aiohttp.ClientSession, url: str, text: str) -> dict[str, object]:
    """The ``done`` event of one chat message."""
    async with http.post(f"{url}/api/chat", json={"conversation": "page-0001", "text": text}) as r:
        assert r.status == 200
        body = (await r.read()).decode()
    frames = [f for f in body.split("\n\n") if f.startswith("event: done")]
    done: dict[str, object] = json.loads(frames[0].split("data: ", 1)[1])
    return done


async def test_feedback_and_forget_from_the_web_page(
    redis: aioredis.Redis,
    settings: Settings,
    engine: StreamingEngine,
    trainer: TrainerService,
) -> None:
    async with serve(settings, redis) as url, aiohttp.ClientSession() as http:
        done = await chat(http, url, "hello")
        request_id = str(done["request_id"])
        # The stand-in engine does not log; log the exchange as an engine does.
        exchange = Exchange(
            request_id=request_id,
            conversation="web:page-0001:page-0001",
            platform="web",
            user="page-0001",
            prompt="hello",
            reply=str(done["text"]),
            model_version="starter",
            created_ms=1,
        )
        await redis.xadd(keys.LOG_STREAM, {keys.FIELD: wire.encode(exchange)})
        while await trainer.archiver.step(block_ms=50):
            pass

        feedback = {"conversation": "page-0001", "request_id": request_id, "value": 1}
        async with http.post(f"{url}/api/feedback", json=feedback) as r:
            assert r.status == 200
        bad = {"conversation": "page-0001", "request_id": request_id, "value": 7}
        async with http.post(f"{url}/api/feedback", json=bad) as r:
            assert r.status == 400

        async with http.post(f"{url}/api/forget", json={"conversation": "page-0001"}) as r:
            assert r.status == 200
            forgot = await r.json()
    assert forgot["ok"] is True
    # Forget came after the feedback on the trainer's stream: the reply it deleted was the
    # one marked good (the user's message and the reply).
    assert (
        "from the archive I deleted 1 archived message(s) of yours, 1 of my replies"
        in (forgot["message"])
    )
    assert [c.command for c in engine.controls()] == ["forget"]
    assert await trainer.archive.call(lambda a: a.total()) == 0


async def test_the_page_rates_a_reply_and_forgets_its_user(
    browser: Any,
    redis: aioredis.Redis,
    settings: Settings,
    engine: StreamingEngine,
    trainer: TrainerService,
) -> None:
    async with serve(settings, redis) as url:
        context = await browser.new_context(viewport=PHONE)
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        await page.goto(url)
        composer = page.get_by_role("textbox", name="Message")
        await composer.fill("rate me")
        await composer.press("Enter")
        await page.locator('.msg.bot[data-state="done"]').wait_for()
        assert await page.locator(".msg.bot").text_content() == reply_for("rate me")
        (chat,) = engine.chats()
        exchange = Exchange(
            request_id=chat.id,
            conversation=chat.conversation,
            platform="web",
            user=chat.user,
            prompt=chat.text,
            reply=reply_for("rate me"),
            model_version="starter",
            created_ms=1,
        )
        await redis.xadd(keys.LOG_STREAM, {keys.FIELD: wire.encode(exchange)})
        while await trainer.archiver.step(block_ms=50):
            pass

        good = page.get_by_role("button", name="Good reply")
        await good.click()
        await page.locator('button[aria-label="Good reply"][aria-pressed="true"]').wait_for()
        await page.reload()  # the rating is kept with the conversation on the page
        await page.locator('button[aria-label="Good reply"][aria-pressed="true"]').wait_for()

        await page.get_by_role("button", name="Forget me", exact=False).click()
        notice = page.locator(".msg.notice")
        await notice.wait_for()
        text = await notice.text_content() or ""
        assert await page.locator(".msg.bot").count() == 0
        await context.close()
    assert text.startswith("Done — I deleted your conversation history")
    assert "from the archive I deleted 1 archived message(s) of yours, 1 of my replies" in text
    assert await trainer.archive.call(lambda a: a.total()) == 0


async def test_the_login_link_opens_the_dashboard_with_the_starter_listed(
    browser: Any, redis: aioredis.Redis, tmp_path: Path, redis_settings: RedisSettings
) -> None:
    settings = make_settings(tmp_path, redis_settings, admin_token="first-run-token")
    registry = ModelRegistry(settings.models_dir)

    async def rollback(version: str | None) -> str:
        return await model_admin.rollback(registry, redis, version)

    async with serve(settings, redis, registry=registry, on_rollback=rollback) as url:
        context = await browser.new_context(viewport=PHONE)
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        await page.goto(f"{url}/admin#token=first-run-token")  # as `parley run` prints it
        await page.locator("#live", has_text="starter").wait_for()
        assert "token" not in page.url  # taken out of the address bar
        versions = await page.locator("#versions").text_content() or ""
        assert "starter (built-in)" in versions
        back = page.get_by_role("button", name="Roll back to the previous version")
        assert await back.is_disabled()  # the starter is the only version
        assert await back.get_attribute("title") == ("There is no earlier version to roll back to.")
        await context.close()
