"""The chat page in a real headless Chromium (Debian's, via playwright), against a real server
and the stand-in engine through the real queue.

Chromium comes from ``scripts/install-browser.sh`` (Debian's package at /usr/bin/chromium;
playwright's own browser download is never used). Without it this test fails under CI
(``CI=true``) with a message saying how to install it, and skips elsewhere.
``PARLEY_TEST_CHROMIUM`` names another Chromium binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest_web import (
    StreamingEngine,
    add_version,
    make_settings,
    reply_for,
    serve,
    write_heartbeat,
)

from bot import keys
from bot.registry import ModelRegistry
from bot.settings import RedisSettings

CHROMIUM = os.environ.get("PARLEY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 375, "height": 667}
TIMEOUT_MS = 15_000

# Records every text the newest bot message shows, so the test sees the reply grow.
WATCH_REPLY = """() => {
  window.__snapshots = [];
  const log = document.getElementById("log");
  new MutationObserver(() => {
    const bots = log.querySelectorAll(".msg.bot");
    const last = bots[bots.length - 1];
    if (!last) return;
    const text = last.textContent;
    const seen = window.__snapshots;
    if (seen[seen.length - 1]?.text !== text) seen.push({ text, state: last.dataset.state });
  }).observe(log, { childList: true, subtree: true, characterData: true });
}"""


def browser_missing(reason: str) -> None:
    message = (
        f"headless Chromium is not usable: {reason}. Install it with "
        "`scripts/install-browser.sh` (Debian's chromium package, as root)."
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        browser_missing(f"{CHROMIUM} does not exist")
    try:
        from playwright.async_api import async_playwright
    except ImportError as e:
        browser_missing(f"the playwright package is not installed ({e})")
    async with async_playwright() as playwright:
        try:
            chromium = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000
            )
        except Exception as e:
            browser_missing(f"{CHROMIUM} did not start ({e})")
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page_url(
    tmp_path: Path, redis: aioredis.Redis, redis_settings: RedisSettings
) -> AsyncIterator[str]:
    settings = make_settings(tmp_path, redis_settings, max_message_chars=300)
    async with serve(settings, redis) as url:
        yield url


async def test_chat_page_streams_survives_reload_and_resets(
    browser: Any, page_url: str, redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    async with StreamingEngine(redis, redis_settings, deltas=5, delay_s=0.25) as engine:
        context = await browser.new_context(viewport=PHONE)
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        await page.goto(page_url)
        composer = page.get_by_role("textbox", name="Message")
        await composer.wait_for()
        assert await page.evaluate("document.activeElement.id") == "input"

        # Type, press Enter, and watch the reply arrive in pieces.
        await page.evaluate(WATCH_REPLY)
        await composer.fill("hello browser")
        await composer.press("Enter")
        done = page.locator('.msg.bot[data-state="done"]')
        await done.wait_for()
        expected = reply_for("hello browser")
        assert await done.text_content() == expected
        snapshots = await page.evaluate("window.__snapshots")
        growing = [s["text"] for s in snapshots if s["state"] == "streaming" and s["text"]]
        assert len(growing) >= 2, snapshots
        assert all(expected.startswith(text) for text in growing)
        assert int(await done.get_attribute("data-deltas") or 0) >= 2
        assert await page.evaluate("document.activeElement.id") == "input"
        assert await composer.input_value() == ""

        # The request went through the queue under the page's conversation id.
        conversation = await page.evaluate("localStorage.getItem('parley.conversation')")
        (chat,) = engine.chats()
        assert chat.conversation == f"web:{conversation}:{conversation}"

        # Shift+Enter is a new line, not a send.
        await composer.press_sequentially("two")
        await composer.press("Shift+Enter")
        await composer.press_sequentially("lines")
        assert await composer.input_value() == "two\nlines"
        assert len(engine.chats()) == 1

        # Readable on a phone: nothing wider than the screen.
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

        # A reload keeps the conversation.
        await page.reload()
        await page.locator(".msg.bot").first.wait_for()
        assert await page.locator(".msg.user").all_text_contents() == ["hello browser"]
        assert await page.locator(".msg.bot").all_text_contents() == [expected]

        # Too long: a clear error, nothing sent.
        await composer.fill("x" * 301)
        await composer.press("Enter")
        error = page.locator(".msg.error")
        await error.wait_for()
        assert "too long" in (await error.text_content() or "")
        assert len(engine.chats()) == 1

        # Reset clears the display (and what is stored) and resets the engine's context.
        await page.get_by_role("button", name="Reset the conversation").click()
        await page.locator(".msg").first.wait_for(state="detached")
        assert await page.locator(".msg").count() == 0
        (control,) = engine.controls()
        assert control.command == "reset"
        assert control.conversation == f"web:{conversation}:{conversation}"
        await page.reload()
        await page.get_by_role("textbox", name="Message").wait_for()
        assert await page.locator(".msg").count() == 0
        await context.close()


async def test_busy_queue_shows_a_clear_message(
    browser: Any, page_url: str, redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    for shard in range(redis_settings.shards):  # no engine, every shard full
        for _ in range(redis_settings.max_stream_len):
            await redis.xadd(keys.request_stream(shard), {keys.FIELD: b"filler"})
    context = await browser.new_context(viewport=PHONE)
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    await page.goto(page_url)
    await page.get_by_role("textbox", name="Message").fill("anyone there?")
    await page.get_by_role("button", name="Send message").click()
    error = page.locator(".msg.error")
    await error.wait_for()
    assert "busy" in (await error.text_content() or "").lower()
    assert await page.locator(".msg.bot").count() == 0
    await context.close()


def test_install_script_is_idempotent_when_chromium_exists() -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed here")
    script = Path(__file__).parents[2] / "scripts" / "install-browser.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


async def test_admin_dashboard_logs_in_and_shows_the_system(
    browser: Any, tmp_path: Path, redis: aioredis.Redis, redis_settings: RedisSettings
) -> None:
    models = tmp_path / "models"
    add_version(models, "v1", {"val_loss": 2.25}, plot=True)
    add_version(models, "v2", {"val_loss": 1.75}, plot=True)
    await redis.set(keys.LIVE_MODEL, "v2")
    await write_heartbeat(redis, "gpu-0", model_version="v2", tokens_per_s=123.0)
    settings = make_settings(tmp_path, redis_settings, admin_token="letmein")
    async with serve(settings, redis, registry=ModelRegistry(models)) as url:
        context = await browser.new_context(viewport=PHONE)
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        await page.goto(f"{url}/admin")
        token = page.get_by_label("Admin token")
        await token.fill("wrong")
        await token.press("Enter")
        await page.get_by_text("not accepted").wait_for()

        await token.fill("letmein")
        await token.press("Enter")
        await page.locator("#live", has_text="v2").wait_for()
        assert await page.locator("#engines-alive").text_content() == "1"
        assert await page.locator("#tokens").text_content() == "123.0"
        assert "1.7500" in (await page.locator("#versions").text_content() or "")
        assert await page.locator("#retrain").is_disabled()  # not wired up in this process

        await page.get_by_role("button", name="Show the loss curve of v1").click()
        plot = page.locator("#plot")
        await page.wait_for_function("document.getElementById('plot').naturalWidth === 1")
        assert await plot.get_attribute("alt") == "Training and validation loss of v1"

        # The token lives in sessionStorage: a reload stays logged in.
        await page.reload()
        await page.locator("#live", has_text="v2").wait_for()
        await context.close()
