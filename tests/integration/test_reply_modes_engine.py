"""``[reply] mode = "retrieve"`` through a real Redis and a real engine worker: a remembered
line is the reply, it is stored like any other, and opting out reaches the engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot import engines, keys
from bot.queue import ParleyClient
from bot.settings import EngineSettings, RedisSettings, ReplySettings, Settings
from bot.store import ConversationStore
from bot.wire import Delta, Done
from engine.checkpoint import Checkpoint
from engine.data.remembered import REPLIES_FILE, write_replies
from engine.serve.replies import ReplyPicker
from tests.integration.test_engine_roundtrip import running_engine
from tests.unit.engine_fixtures import tiny_checkpoint

CONVERSATIONS = [
    [("telegram:1:alice", "do you like tea?"), ("telegram:1:bob", "green tea every morning")],
    [("telegram:2:carol", "tea or coffee"), ("telegram:2:dave", "tea, always tea")],
]
TEA_LINES = {"green tea every morning", "tea, always tea"}


@pytest.fixture
def settings(redis_settings: RedisSettings, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        redis=redis_settings,
        engine=EngineSettings(read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.1),
        reply=ReplySettings(mode="retrieve"),
    )


@pytest.fixture
def ckpt(tmp_path: Path) -> Checkpoint:
    ckpt = tiny_checkpoint(tmp_path / "tiny", "gru")
    write_replies(ckpt.path / REPLIES_FILE, CONVERSATIONS)
    return ckpt


async def heartbeats_after(redis: aioredis.Redis, count: int) -> None:
    """Wait until the engine has published ``count`` more heartbeats (each one is followed
    by a refresh of the opted-out set before the next)."""
    seen: float | None = None
    left = count
    while left:
        beats = await engines.read_heartbeats(redis)
        now = beats[0].time if beats else None
        if now is not None and now != seen:
            if seen is not None:
                left -= 1
            seen = now
        await asyncio.sleep(0.02)


async def ask(client: ParleyClient, make_chat, text: str) -> tuple[Done, str]:
    events = [e async for e in client.stream(make_chat(text), timeout_s=20)]
    done = events[-1]
    assert isinstance(done, Done), done
    return done, "".join(e.text for e in events if isinstance(e, Delta))


async def test_remembered_replies_are_served_stored_and_honour_opt_outs(
    redis, settings, ckpt, make_chat
) -> None:
    async with (
        running_engine(redis, settings, ckpt, replies=ReplyPicker(settings.reply)),
        ParleyClient(redis, settings.redis, "test") as client,
    ):
        done, streamed = await ask(client, make_chat, "do you like tea?")
        assert done.text in TEA_LINES and streamed == ""  # sent whole, once chosen
        conversation = f"test:chat:{done.request_id.removeprefix('req-')}"
        assert await redis.llen(keys.history(conversation)) == 2
        store = ConversationStore(redis, ttl_s=60)
        await store.opt_out("telegram:1:bob")
        await store.opt_out("telegram:2:dave")
        await asyncio.wait_for(heartbeats_after(redis, 2), 10)
        done, _ = await ask(client, make_chat, "do you like tea?")
        assert done.text not in TEA_LINES  # generated: every line about tea is opted out
        await store.opt_in("telegram:2:dave")
        await asyncio.wait_for(heartbeats_after(redis, 2), 10)
        done, _ = await ask(client, make_chat, "do you like tea?")
        assert done.text == "tea, always tea"
