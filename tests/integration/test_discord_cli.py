"""``parley adapter discord`` as an operator runs it: a process that connects to (the local)
Discord, answers, and stops cleanly on SIGTERM; start-up errors say what to fix."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_harness import build_world
from tests.unit.engine_fixtures import tiny_checkpoint

PARLEY = [sys.executable, "-m", "bot.cli", "adapter", "discord"]

pytestmark = pytest.mark.timeout(90)


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update({"PARLEY_DATA_DIR": str(tmp_path), **extra})
    return env


async def test_the_adapter_process_answers_and_stops_on_sigterm(
    tmp_path: Path, redis_url: str, redis, redis_settings, echo_engine
) -> None:
    async with FakeDiscord() as fake:
        world = build_world(fake)
        env = env_for(
            tmp_path,
            PARLEY_DISCORD__TOKEN=fake.token,
            PARLEY_DISCORD__API_BASE=fake.api_base,
            PARLEY_DISCORD__GATEWAY_URL=fake.gateway_url,
            PARLEY_DISCORD__GUILD_IDS=f"[{world.guild.id}]",
            PARLEY_DISCORD__GUILD_READY_TIMEOUT_S="0.05",
            PARLEY_REDIS__URL=redis_url,
            PARLEY_REDIS__SHARDS=str(redis_settings.shards),
        )
        proc = await asyncio.create_subprocess_exec(
            *PARLEY, env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            await fake.wait_for(lambda: fake.identifies == 1, timeout_s=60)
            asked = await fake.say(world.alice, world.general, "from a process", mention_bot=True)
            await fake.wait_for(lambda: bool(fake.replies_to(asked)))
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert fake.replies_to(asked)[0].text == "echo: from a process"
    assert proc.returncode == 0, stderr.decode()
    assert fake.commands[world.guild.id]


async def test_parley_run_chats_on_discord_when_a_token_is_set(tmp_path: Path) -> None:
    """The whole system in one process (embedded Redis, engine with a tiny model, trainer)
    starts the Discord adapter because the token is set, and answers a mention."""
    model = tiny_checkpoint(tmp_path / "model", "gru").path
    async with FakeDiscord() as fake:
        world = build_world(fake)
        env = env_for(
            tmp_path / "data",
            PARLEY_ENGINE__MODEL=str(model),
            PARLEY_DISCORD__TOKEN=fake.token,
            PARLEY_DISCORD__API_BASE=fake.api_base,
            PARLEY_DISCORD__GATEWAY_URL=fake.gateway_url,
            PARLEY_DISCORD__GUILD_READY_TIMEOUT_S="0.05",
        )
        run = [sys.executable, "-m", "bot.cli", "run", "--no-web"]
        proc = await asyncio.create_subprocess_exec(*run, env=env, stderr=asyncio.subprocess.PIPE)
        try:
            await fake.wait_for(lambda: fake.identifies == 1, timeout_s=60)
            asked = await fake.say(world.alice, world.general, "hello", mention_bot=True)
            await fake.wait_for(lambda: bool(fake.replies_to(asked)), timeout_s=30)
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert fake.replies_to(asked)[0].text.strip()
    assert proc.returncode == 0, stderr.decode()[-2000:]


@pytest.mark.parametrize(
    ("token", "expected"),
    [(None, "PARLEY_DISCORD__TOKEN"), ("wrong-token", "Discord refused the token")],
)
async def test_start_up_errors_name_the_fix(
    tmp_path: Path, redis_url: str, token: str | None, expected: str
) -> None:
    async with FakeDiscord() as fake:
        env = env_for(
            tmp_path,
            PARLEY_DISCORD__API_BASE=fake.api_base,
            PARLEY_DISCORD__GATEWAY_URL=fake.gateway_url,
            PARLEY_REDIS__URL=redis_url,
        )
        if token is not None:
            env["PARLEY_DISCORD__TOKEN"] = token
        proc = await asyncio.create_subprocess_exec(
            *PARLEY, env=env, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode != 0
    assert expected in stderr.decode() and "Traceback" not in stderr.decode()
