"""``parley adapter telegram`` as a process: it answers, stops cleanly on SIGTERM (releasing
its poller lease), and names what is wrong when it cannot start."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from bot import keys
from tests.fakes.telegram_api import FakeBotAPI
from tests.fakes.telegram_harness import ALICE, private
from tests.unit.engine_fixtures import tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def fake():
    async with FakeBotAPI() as api:
        yield api


def adapter_env(redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update({"PARLEY_REDIS__URL": redis_url, "PARLEY_DATA_DIR": str(tmp_path), **extra})
    return env


async def start(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "adapter",
        "telegram",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_answers_and_stops_on_sigterm(
    fake, redis, redis_url, redis_settings, tmp_path, echo_engine
) -> None:
    env = adapter_env(
        redis_url,
        tmp_path,
        PARLEY_REDIS__SHARDS=str(redis_settings.shards),
        PARLEY_TELEGRAM__TOKEN=fake.token,
        PARLEY_TELEGRAM__BASE_URL=fake.base_url,
    )
    proc = await start(env)
    try:
        fake.send_text(private(ALICE), ALICE, "hi process")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1, timeout_s=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, output.decode()
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["echo: hi process"]
    assert await redis.exists(keys.telegram_poller(123456)) == 0  # released for a standby
    assert fake.token not in output.decode()  # the token is never logged


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "needs a bot token: set PARLEY_TELEGRAM__TOKEN"),
        (
            {
                "PARLEY_TELEGRAM__TOKEN": "1:x",
                "PARLEY_TELEGRAM__BASE_URL": "http://127.0.0.1:9/bot",
            },
            "cannot reach the Telegram Bot API at http://127.0.0.1:9/bot",
        ),
    ],
)
async def test_start_up_errors_are_one_line(redis_url, tmp_path, extra, message) -> None:
    proc = await start(adapter_env(redis_url, tmp_path, **extra))
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert message in output.decode() and "Traceback" not in output.decode()


async def test_a_refused_token_is_named(fake, redis_url, tmp_path) -> None:
    env = adapter_env(
        redis_url,
        tmp_path,
        PARLEY_TELEGRAM__TOKEN="123456:WRONG",
        PARLEY_TELEGRAM__BASE_URL=fake.base_url,
    )
    proc = await start(env)
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "Telegram refused the bot token" in output.decode()
    assert "Traceback" not in output.decode()


async def test_parley_run_chats_on_telegram_when_a_token_is_set(fake, tmp_path) -> None:
    model = tiny_checkpoint(tmp_path / "model", "gru").path
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(
        PARLEY_DATA_DIR=str(tmp_path / "data"),  # no Redis URL: its own embedded server
        PARLEY_ENGINE__MODEL=str(model),
        PARLEY_TELEGRAM__TOKEN=fake.token,
        PARLEY_TELEGRAM__BASE_URL=fake.base_url,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        "--no-web",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        fake.send_text(private(ALICE), ALICE, "hello there")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1, timeout_s=120)
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, output.decode()[-3000:]
    [reply] = fake.messages_in(ALICE.id)
    assert reply.text.strip()  # the tiny model's words, whatever they are
