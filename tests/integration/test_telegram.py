"""The Telegram adapter end to end with a stub engine: fake Bot API → python-telegram-bot →
adapter → Redis → echo engine → adapter → fake. (The conversations with a real tiny model are
in test_telegram_engine.py.)"""

from __future__ import annotations

import pytest

from tests.fakes.telegram_api import FakeBotAPI
from tests.fakes.telegram_harness import (
    ALICE,
    GROUP,
    handled,
    private,
    running_adapter,
    telegram_settings,
)


@pytest.fixture
async def fake():
    async with FakeBotAPI() as api:
        yield api


@pytest.fixture
def settings(fake, redis_settings, tmp_path):
    return telegram_settings(fake, redis_settings, tmp_path)


async def test_private_message_gets_the_engine_reply(fake, settings, redis, echo_engine) -> None:
    async with running_adapter(settings, redis):
        fake.send_text(private(ALICE), ALICE, "hello there")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    [sent] = fake.messages_in(ALICE.id)
    assert sent.text == "echo: hello there"
    assert sent.reply_to is None  # private chats are not quoted
    assert fake.violations == []


async def test_group_message_without_mention_is_ignored(fake, settings, redis, echo_engine) -> None:
    async with running_adapter(settings, redis):
        uid = fake.send_text(GROUP, ALICE, "just chatting")
        await handled(fake, uid)
        fake.send_text(GROUP, ALICE, "@parley_test_bot hi")
        await fake.wait_for(lambda: len(fake.messages_in(GROUP.id)) == 1)
    assert [s.text for s in fake.messages_in(GROUP.id)] == ["echo: hi"]
