"""Replies owed by a process that is gone: an adapter killed (SIGKILL) after it confirmed an
update's offset and before it sent the reply is restarted, and the user gets exactly one
reply, whether the engine answered while no adapter ran or after the restart; a reply that
was sent already is not sent again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from adapters.telegram.pending import PendingReplies
from bot import keys
from bot.settings import RedisSettings
from tests.fakes.telegram_api import FakeBotAPI
from tests.fakes.telegram_harness import (
    ALICE,
    GROUP,
    FreezableProxy,
    handled,
    private,
    running_adapter,
    telegram_settings,
)

REPO = Path(__file__).resolve().parents[2]
BOT_ID = 123456
TTL_S = 3600

Send = Callable[[], int]


@pytest.fixture
async def fake():
    async with FakeBotAPI() as api:
        yield api


async def adapter_process(
    fake: FakeBotAPI, redis_url: str, redis_settings: RedisSettings, data_dir: Path
) -> asyncio.subprocess.Process:
    """``parley adapter telegram`` as its own process, polling ``fake``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(
        PARLEY_REDIS__URL=redis_url,
        PARLEY_REDIS__SHARDS=str(redis_settings.shards),
        PARLEY_DATA_DIR=str(data_dir),
        PARLEY_TELEGRAM__TOKEN=fake.token,
        PARLEY_TELEGRAM__BASE_URL=fake.base_url,
        PARLEY_TELEGRAM__POLLER_LEASE_S="1",
        PARLEY_TELEGRAM__POLL_TIMEOUT_S="5",
    )
    log = (data_dir / "adapter.log").open("wb")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "adapter", "telegram", cwd=REPO, env=env,
            stdout=log, stderr=log,
        )  # fmt: skip
    finally:
        log.close()


async def reply_written(redis: aioredis.Redis, adapter_id: str) -> None:
    """Until the reply stream of ``adapter_id`` holds an entry (a blocking read)."""
    response = await redis.xread({keys.reply_stream(adapter_id): "0-0"}, count=1, block=20_000)
    assert response, f"no reply written to {adapter_id} in 20 s"


async def killed_after_the_offset(
    fake: FakeBotAPI, redis_url: str, redis_settings: RedisSettings, data_dir: Path, send: Send
) -> tuple[int, int]:
    """Run an adapter process, make a user write (``send``), SIGKILL the process once the
    update's offset is confirmed; the update id and the process id."""
    proc = await adapter_process(fake, redis_url, redis_settings, data_dir)
    try:
        await fake.wait_for(lambda: bool(fake.calls_of("getUpdates")), timeout_s=60)
        uid = send()
        await handled(fake, uid)  # its offset is stored and confirmed to Telegram
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    return uid, proc.pid


@pytest.mark.parametrize("engine_first", [True, False], ids=["engine-first", "restart-first"])
async def test_killed_after_the_offset_is_stored_the_user_gets_one_reply(
    fake, redis, redis_url, redis_settings, tmp_path, echo_engine_cls, engine_first
) -> None:
    def send() -> int:
        return fake.send_text(private(ALICE), ALICE, "still there?")

    uid, pid = await killed_after_the_offset(fake, redis_url, redis_settings, tmp_path, send)
    assert int(await redis.get(keys.telegram_offset(BOT_ID))) == uid + 1
    assert fake.messages_in(ALICE.id) == []  # no engine ran: nothing was sent
    [owed] = await PendingReplies(redis, BOT_ID, TTL_S).load()
    assert owed.reply_to == f"telegram-{socket.gethostname()}-{pid}"
    assert owed.chat_id == ALICE.id

    settings = telegram_settings(fake, redis_settings, tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        if engine_first:  # it answers to the dead process's reply stream
            engine = await stack.enter_async_context(echo_engine_cls(redis, redis_settings))
            await reply_written(redis, owed.reply_to)
        typed = len(fake.actions)
        await stack.enter_async_context(running_adapter(settings, redis))
        if not engine_first:  # typing in Alice's chat: it took the reply over and waits
            await fake.wait_for(lambda: len(fake.actions) > typed)
            engine = await stack.enter_async_context(echo_engine_cls(redis, redis_settings))
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
        fake.send_text(private(ALICE), ALICE, "and now?")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 2)
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["echo: still there?", "echo: and now?"]
    assert [d.request.text for d in engine.served] == ["still there?", "and now?"]
    assert await PendingReplies(redis, BOT_ID, TTL_S).load() == []
    assert fake.delivered.count(uid) == 1  # Telegram never had to deliver it again


async def test_an_owed_group_reply_goes_to_its_topic_quoting_the_message(
    fake, redis, redis_url, redis_settings, tmp_path, echo_engine_cls
) -> None:
    def send() -> int:
        return fake.send_text(GROUP, ALICE, "@parley_test_bot hello group", thread_id=7)

    await killed_after_the_offset(fake, redis_url, redis_settings, tmp_path, send)
    [owed] = await PendingReplies(redis, BOT_ID, TTL_S).load()
    settings = telegram_settings(fake, redis_settings, tmp_path)
    async with echo_engine_cls(redis, redis_settings), running_adapter(settings, redis):
        await fake.wait_for(lambda: len(fake.messages_in(GROUP.id)) == 1)
    [sent] = fake.messages_in(GROUP.id)
    assert sent.text == "echo: hello group"
    assert owed.group and owed.quote is not None
    assert (sent.thread_id, sent.reply_to) == (7, owed.quote)


async def test_a_reply_sent_already_is_not_sent_again(
    fake, redis, redis_settings, tmp_path, echo_engine_cls
) -> None:
    settings = telegram_settings(fake, redis_settings, tmp_path)
    pending = PendingReplies(redis, BOT_ID, TTL_S)
    async with running_adapter(settings, redis):
        uid = fake.send_text(private(ALICE), ALICE, "only once")
        await handled(fake, uid)
        [owed] = await pending.load()
        async with echo_engine_cls(redis, redis_settings):
            await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    assert await pending.load() == []  # delivered: no longer owed
    # As if the process had died after sending the reply and before marking it delivered:
    await pending.add(owed)
    async with echo_engine_cls(redis, redis_settings), running_adapter(settings, redis):
        fake.send_text(private(ALICE), ALICE, "next")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 2)
    # The adapter drained before the block ended: the owed reply was settled, not resent.
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["echo: only once", "echo: next"]
    assert await pending.load() == []


async def test_a_webhook_adapter_delivers_the_replies_owed_when_it_starts(
    fake, redis, redis_url, redis_settings, tmp_path, echo_engine_cls
) -> None:
    def send() -> int:
        return fake.send_text(private(ALICE), ALICE, "switching to a webhook")

    await killed_after_the_offset(fake, redis_url, redis_settings, tmp_path, send)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    settings = telegram_settings(
        fake,
        redis_settings,
        tmp_path,
        mode="webhook",
        webhook_url="https://bot.example.org/telegram",
        webhook_secret="secret",
        webhook_port=port,
    )
    async with echo_engine_cls(redis, redis_settings), running_adapter(settings, redis):
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["echo: switching to a webhook"]
    assert await PendingReplies(redis, BOT_ID, TTL_S).load() == []


async def test_killed_before_the_offset_is_stored_the_redelivery_is_not_sent_again(
    fake, redis, redis_url, redis_settings, tmp_path, echo_engine_cls
) -> None:
    # The request and its record are in Redis; the process dies as it stores the offset, so
    # Telegram delivers the update again to the next one, which is answering it already.
    offset_key = keys.telegram_offset(BOT_ID).encode()
    storing_the_offset = b"SET\r\n$%d\r\n%s" % (len(offset_key), offset_key)
    url = urlsplit(redis_url)
    proxy = FreezableProxy(
        url.hostname or "127.0.0.1",
        url.port or 6379,
        (storing_the_offset,),
        freeze_on=(storing_the_offset,),
    )
    await proxy.start()
    proxied = f"redis://127.0.0.1:{proxy.port}{url.path}"
    proc = await adapter_process(fake, proxied, redis_settings, tmp_path)
    try:
        await fake.wait_for(lambda: bool(fake.calls_of("getUpdates")), timeout_s=60)
        uid = fake.send_text(private(ALICE), ALICE, "kept, not confirmed")
        async with asyncio.timeout(20):
            await proxy.held_marker.wait()
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await proxy.close()
    assert await redis.get(keys.telegram_offset(BOT_ID)) is None
    [owed] = await PendingReplies(redis, BOT_ID, TTL_S).load()

    settings = telegram_settings(fake, redis_settings, tmp_path)
    async with (
        echo_engine_cls(redis, redis_settings) as engine,
        running_adapter(settings, redis),
    ):
        await handled(fake, uid)
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["echo: kept, not confirmed"]
    assert fake.delivered.count(uid) == 2  # delivered again, and recognised
    assert [d.request.id for d in engine.served] == [owed.request_id]  # not submitted twice
    assert await PendingReplies(redis, BOT_ID, TTL_S).load() == []
