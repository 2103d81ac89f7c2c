"""No lost and no doubled updates: a crash between getUpdates and enqueue, a redelivered
update, two adapters for one token, and the webhook path with its secret."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from bot import keys
from tests.fakes.telegram_api import FakeBotAPI
from tests.fakes.telegram_harness import (
    ALICE,
    FreezableProxy,
    handled,
    private,
    running_adapter,
    telegram_settings,
)

REPO = Path(__file__).resolve().parents[2]
BOT_ID = 123456


@pytest.fixture
async def fake():
    async with FakeBotAPI() as api:
        yield api


async def request_stream_lengths(redis, shards: int) -> int:
    return sum([await redis.xlen(keys.request_stream(s)) for s in range(shards)])


async def test_killed_between_getupdates_and_enqueue_answers_once_after_restart(
    fake, redis, redis_url, redis_settings, tmp_path, echo_engine
) -> None:
    url = urlsplit(redis_url)
    # The Redis keys an adapter touches first when it handles a message: the rate limit, the
    # reply claim, the request stream. None of them may be reached before the kill.
    handling = (b"parley:rl", b"parley:tg:replied", b"parley:req:")
    proxy = await FreezableProxy(url.hostname or "127.0.0.1", url.port or 6379, handling).start()
    env = {
        **os.environ,
        "PARLEY_REDIS__URL": f"redis://127.0.0.1:{proxy.port}{url.path}",
        "PARLEY_REDIS__SHARDS": str(redis_settings.shards),
        "PARLEY_DATA_DIR": str(tmp_path / "killed"),
        "PARLEY_TELEGRAM__TOKEN": fake.token,
        "PARLEY_TELEGRAM__BASE_URL": fake.base_url,
        "PARLEY_TELEGRAM__POLLER_LEASE_S": "1",
        "PARLEY_TELEGRAM__POLL_TIMEOUT_S": "5",
    }
    log_file = (tmp_path / "adapter.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "adapter",
        "telegram",
        cwd=REPO,
        env=env,
        stdout=log_file,
        stderr=log_file,
    )
    try:
        await fake.wait_for(lambda: bool(fake.calls_of("getUpdates")), timeout_s=60)
        proxy.frozen = True  # from now on its Redis commands go nowhere
        uid = fake.send_text(private(ALICE), ALICE, "are you there?")
        async with asyncio.timeout(20):
            await proxy.held_marker.wait()  # it fetched the update and is handling it
        assert uid in fake.delivered
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await proxy.close()
        log_file.close()
    assert await redis.get(keys.telegram_offset(BOT_ID)) is None  # never confirmed
    assert await request_stream_lengths(redis, redis_settings.shards) == 0

    settings = telegram_settings(fake, redis_settings, tmp_path)
    async with running_adapter(settings, redis):  # waits out the dead process's lease
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
        await handled(fake, uid)
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["echo: are you there?"]
    assert len(echo_engine.served) == 1
    assert int(await redis.get(keys.telegram_offset(BOT_ID))) == uid + 1


async def test_a_redelivered_update_is_not_answered_twice(
    fake, redis, redis_settings, tmp_path, echo_engine
) -> None:
    settings = telegram_settings(fake, redis_settings, tmp_path)
    async with running_adapter(settings, redis):
        uid = fake.send_text(private(ALICE), ALICE, "once")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    # As if the process died after replying but before its offset reached Telegram:
    await redis.delete(keys.telegram_offset(BOT_ID))
    fake.redeliver(uid)
    async with running_adapter(settings, redis):
        await handled(fake, uid)
        fake.send_text(private(ALICE), ALICE, "twice?")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 2)
    assert fake.delivered.count(uid) == 2
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["echo: once", "echo: twice?"]
    assert len(echo_engine.served) == 2  # the redelivery was not sent to the engine again


async def test_a_second_adapter_stands_by_and_takes_over(
    fake, redis, redis_settings, tmp_path, echo_engine, caplog
) -> None:
    first = telegram_settings(fake, redis_settings, tmp_path, adapter_id="tg-a")
    second = telegram_settings(fake, redis_settings, tmp_path, adapter_id="tg-b")
    caplog.set_level(logging.INFO, logger="adapters.telegram")
    async with contextlib.AsyncExitStack() as a:
        await a.enter_async_context(running_adapter(first, redis))
        await fake.wait_for(lambda: bool(fake.calls_of("getUpdates")))
        async with running_adapter(second, redis):
            fake.send_text(private(ALICE), ALICE, "one")
            await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
            assert await redis.get(keys.telegram_poller(BOT_ID)) == b"tg-a"
            await a.aclose()  # the poller stops (and releases its lease)
            fake.send_text(private(ALICE), ALICE, "two")
            await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 2)
            assert await redis.get(keys.telegram_poller(BOT_ID)) == b"tg-b"
    assert fake.conflicts == 0  # never two getUpdates at once
    assert any("tg-b waits as a standby" in r.getMessage() for r in caplog.records)
    assert [d.request.reply_to for d in echo_engine.served] == ["tg-a", "tg-b"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_webhook_refuses_a_wrong_secret_and_takes_the_right_one(
    fake, redis, redis_settings, tmp_path, echo_engine
) -> None:
    port = free_port()
    settings = telegram_settings(
        fake,
        redis_settings,
        tmp_path,
        mode="webhook",
        webhook_url="https://bot.example.org/telegram",
        webhook_secret="right-secret_1",
        webhook_port=port,
    )
    update = {"update_id": 5000, "message": fake.message(private(ALICE), ALICE, "via webhook")}
    endpoint = f"http://127.0.0.1:{port}/telegram"
    async with running_adapter(settings, redis), aiohttp.ClientSession() as http:
        [registered] = fake.calls_of("setWebhook")
        assert registered["url"] == "https://bot.example.org/telegram"
        assert registered["secret_token"] == "right-secret_1"
        assert registered["allowed_updates"] == ["message", "message_reaction"]
        for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
            async with http.post(endpoint, json=update, headers=headers) as response:
                assert response.status == 403
        assert await request_stream_lengths(redis, redis_settings.shards) == 0
        right = {"X-Telegram-Bot-Api-Secret-Token": "right-secret_1"}
        async with http.post(endpoint, json=update, headers=right) as response:
            assert response.status == 200
        async with http.post(endpoint, data=b"not json", headers=right) as response:
            assert response.status == 400
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["echo: via webhook"]
    assert fake.calls_of("getUpdates") == []
    assert len(echo_engine.served) == 1
