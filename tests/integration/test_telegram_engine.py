"""Telegram conversations with a real engine worker and a tiny seeded CPU model: fake Bot API →
python-telegram-bot → adapter → Redis → engine → adapter → fake."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import keys
from bot.settings import EngineSettings, SamplingSettings, Settings
from bot.wire import decode_turn
from engine.checkpoint import Checkpoint
from tests.fakes.telegram_api import FakeBotAPI
from tests.fakes.telegram_harness import ALICE, private, running_adapter, telegram_settings
from tests.integration.test_engine_roundtrip import running_engine
from tests.unit.engine_fixtures import tiny_checkpoint

CONVERSATION = f"telegram:{ALICE.id}:{ALICE.id}"


@pytest.fixture
async def fake():
    async with FakeBotAPI() as api:
        yield api


@pytest.fixture
def settings(fake: FakeBotAPI, redis_settings, tmp_path: Path) -> Settings:
    # No reclaiming within a test: a loaded CPU can hold a request longer than the 200 ms
    # the queue tests use, and a reclaimed request would be answered again out of order.
    queue = redis_settings.model_copy(update={"claim_idle_ms": 60_000})
    base = telegram_settings(fake, queue, tmp_path)
    return base.model_copy(
        update={
            "engine": EngineSettings(read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2),
            "sampling": SamplingSettings(temperature=0.0, max_new_tokens=40),
        }
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return tiny_checkpoint(tmp_path_factory.mktemp("telegram") / "tiny", "gru")


async def stored_turns(redis, conversation: str) -> list[tuple[str, str]]:
    raw = await redis.lrange(keys.history(conversation), 0, -1)
    return [(t.role, t.text) for t in map(decode_turn, raw)]


def shown(fake: FakeBotAPI, chat_id: int) -> str:
    """The reply as the user sees it: its messages' texts, in order."""
    return "\n".join(s.text for s in fake.messages_in(chat_id))


async def test_private_chat_streams_the_models_reply_with_edits(
    fake, settings, redis, ckpt
) -> None:
    async with running_engine(redis, settings, ckpt), running_adapter(settings, redis):
        fake.send_text(private(ALICE), ALICE, "hello there")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    # Leaving the block stops the adapter the way SIGTERM does: the reply in flight finishes.
    turns = await stored_turns(redis, CONVERSATION)
    assert turns[0] == ("user", "hello there") and turns[1][0] == "bot"
    [sent] = fake.messages_in(ALICE.id)
    assert sent.edits, "the reply streamed by editing its message"
    assert squeezed(sent.text) == squeezed(turns[1][1])
    assert (ALICE.id, "typing", None) in fake.actions
    assert fake.violations == []


async def test_a_conversation_in_chinese(fake, settings, redis, ckpt) -> None:
    question = "你好，今天天气怎么样？"
    async with running_engine(redis, settings, ckpt), running_adapter(settings, redis):
        fake.send_text(private(ALICE), ALICE, "hello there")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
        fake.send_text(private(ALICE), ALICE, question)
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 2)
    turns = await stored_turns(redis, CONVERSATION)
    assert [role for role, _ in turns] == ["user", "bot", "user", "bot"]
    assert turns[2] == ("user", question)  # arrived intact, in the same conversation
    _first, second = fake.messages_in(ALICE.id)
    assert squeezed(second.text) == squeezed(turns[3][1])  # and went out as the model wrote it


def squeezed(text: str) -> str:
    """Whitespace-insensitive form (the pump trims the ends of each message)."""
    return " ".join(text.split())
