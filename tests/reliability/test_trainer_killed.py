"""The retrain process killed (SIGKILL) in the middle of training.

The real trainer service runs its retrain child (``python -m engine.train.retrain``) beside a
real engine; an admin's /retrain starts it, and once it reports progress it is killed. What
the admin sees: the job ends "failed" with the reason and the live model named as still
serving. What users see: the live model keeps answering. No half-written version is
published, and the lock is released, so the next /retrain is a new job.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot import keys
from bot.settings import RedisSettings
from bot.wire import Done
from tests.integration.test_learning import admin, make_settings, running

pytestmark = pytest.mark.timeout(300)


def retrain_children() -> list[int]:
    """Pids of this process's children running ``engine.train.retrain`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"engine.train.retrain" in cmdline:
            found.append(int(entry.name))
    return found


async def test_a_retrain_killed_mid_run_leaves_the_live_model_serving(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, redis_settings, max_steps=100_000, budget_s=600.0)
    async with running(settings, redis, tmp_path) as system:
        live = system.registry.live()
        assert live is not None
        answer = await system.commands.answer("retrain", "", admin("killed-1"))
        assert answer.updates is not None, answer.text
        updates, killed = [], []
        async for update in answer.updates:
            updates.append(update)
            if not killed:
                killed = retrain_children()  # it is training: it reported progress
                assert killed, "no retrain process found"
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
        events = await system.chat("after-kill", "u1", "hello there")
        assert await redis.exists(keys.TRAIN_LOCK) == 0  # released: the next one can run
        next_answer = await system.commands.answer("retrain", "", admin("killed-2"))
        if next_answer.updates is not None:
            await next_answer.updates.aclose()  # type: ignore[attr-defined]
        for pid in retrain_children():
            os.kill(pid, signal.SIGKILL)
    assert "failed" in updates[-1] and live.version in updates[-1], updates[-1]
    assert system.registry.live().version == live.version  # type: ignore[union-attr]
    assert [v.version for v in system.registry.published()] == [live.version]
    assert isinstance(events[-1], Done) and events[-1].model_version == live.version
    assert "already" not in next_answer.text.lower(), next_answer.text
