"""The sender never shows a message twice: a ``sendMessage`` that timed out after Telegram
carried it out is not repeated, one that never reached Telegram (no connection) or that
Telegram refused with a 5xx is; an edit is repeated after any failure. The real
python-telegram-bot client against the local Bot API."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from telegram import Bot
from telegram.error import NetworkError
from telegram.request import HTTPXRequest

from adapters.pump import ReplyGone
from adapters.telegram.metrics import telegram_metrics
from adapters.telegram.sender import Sender, maybe_done
from tests.fakes.telegram_api import INTERNAL, FakeBotAPI
from tests.fakes.telegram_harness import ALICE

READ_TIMEOUT_S = 0.5
"""The client's read timeout here: a held answer outlasts it."""


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI() as api:
        yield api


def make_bot(token: str, base_url: str) -> Bot:
    request = HTTPXRequest(read_timeout=READ_TIMEOUT_S, connect_timeout=READ_TIMEOUT_S)
    return Bot(token, base_url=base_url, request=request)


@pytest.fixture
async def bot(fake: FakeBotAPI, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Bot]:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    async with make_bot(fake.token, fake.base_url) as bot:
        yield bot


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def errors(registry: CollectorRegistry, kind: str) -> float:
    labels = {"adapter": "t", "error": kind}
    return registry.get_sample_value("parley_telegram_api_errors_total", labels) or 0.0


async def test_a_send_that_timed_out_after_it_was_done_is_not_repeated(
    fake: FakeBotAPI, bot: Bot, registry: CollectorRegistry
) -> None:
    sender = Sender(bot, telegram_metrics(registry), "t")
    release = fake.hold_answer("sendMessage")
    try:
        with pytest.raises(ReplyGone, match="may have been done"):
            await sender.send(ALICE.id, "hello once", interval_s=0.0)
    finally:
        release.set()
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["hello once"]
    assert len(fake.calls_of("sendMessage")) == 1
    assert errors(registry, "uncertain") == 1


async def test_a_send_refused_with_a_server_error_is_repeated(
    fake: FakeBotAPI, bot: Bot, registry: CollectorRegistry
) -> None:
    sender = Sender(bot, telegram_metrics(registry), "t")
    fake.fail_next("sendMessage", INTERNAL)
    await sender.send(ALICE.id, "after a 500", interval_s=0.0)
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["after a 500"]
    assert len(fake.calls_of("sendMessage")) == 2
    assert (errors(registry, "network"), errors(registry, "uncertain")) == (1, 0)


async def test_an_edit_that_timed_out_is_repeated(
    fake: FakeBotAPI, bot: Bot, registry: CollectorRegistry
) -> None:
    sender = Sender(bot, telegram_metrics(registry), "t")
    message_id = await sender.send(ALICE.id, "draft", interval_s=0.0)
    release = fake.hold_answer("editMessageText")
    try:
        await sender.edit(ALICE.id, message_id, "final", interval_s=0.0)
    finally:
        release.set()
    [sent] = fake.messages_in(ALICE.id)
    assert sent.text == "final" and sent.edits == ["final"]  # the repeat was "not modified"
    assert len(fake.calls_of("editMessageText")) == 2


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once it is closed


async def test_what_proves_a_call_was_not_done(
    fake: FakeBotAPI, bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    unreachable = make_bot(fake.token, f"http://127.0.0.1:{closed_port()}/bot")
    try:
        with pytest.raises(NetworkError) as refused:
            await unreachable.send_message(ALICE.id, "never sent")
    finally:
        await unreachable.shutdown()
    assert isinstance(refused.value.__cause__, httpx.ConnectError)
    assert not maybe_done(refused.value)  # no connection: safe to repeat

    fake.fail_next("sendMessage", INTERNAL)
    with pytest.raises(NetworkError) as server_error:
        await bot.send_message(ALICE.id, "refused")
    assert not maybe_done(server_error.value)  # Telegram's own error answer

    release = fake.hold_answer("sendMessage")
    try:
        with pytest.raises(NetworkError) as timed_out:
            await bot.send_message(ALICE.id, "done, answer lost")
    finally:
        release.set()
    assert maybe_done(timed_out.value)  # it was sent: never repeat it
    assert [s.text for s in fake.messages_in(ALICE.id)] == ["done, answer lost"]
