"""The Telegram adapter end to end with a stub engine: fake Bot API → python-telegram-bot →
adapter → Redis → echo engine → adapter → fake. (The conversations with a real tiny model are
in test_telegram_engine.py; restarts and webhooks in test_telegram_delivery.py.)"""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import REGISTRY

from adapters.telegram.updates import EMPTY_MENTION_NOTE, MEDIA_NOTE
from bot import commands, keys
from bot.commands import COMMANDS
from bot.queue import BUSY_MESSAGE, UNAVAILABLE_MESSAGE
from bot.wire import ChatRequest, Request, decode_trainer_message
from tests.fakes.telegram_api import (
    BAD_GATEWAY,
    CONFLICT,
    TOO_LONG,
    FakeBotAPI,
    User,
    utf16_units,
)
from tests.fakes.telegram_harness import (
    ADMIN,
    ALICE,
    BOB,
    FORUM,
    GROUP,
    OTHER_BOT,
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


def texts(fake: FakeBotAPI, chat_id: int) -> list[str]:
    return [s.text for s in fake.messages_in(chat_id)]


async def test_private_message_gets_the_engine_reply(fake, settings, redis, echo_engine) -> None:
    async with running_adapter(settings, redis):
        fake.send_text(private(ALICE), ALICE, "hello there")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    [sent] = fake.messages_in(ALICE.id)
    assert sent.text == "echo: hello there"
    assert sent.reply_to is None  # private chats are not quoted
    assert fake.violations == []
    [served] = echo_engine.served
    assert isinstance(served.request, ChatRequest)
    assert served.request.conversation == f"telegram:{ALICE.id}:{ALICE.id}"
    assert served.request.user == f"telegram:{ALICE.id}"
    assert fake.allowed_updates == ["message", "message_reaction"]
    assert fake.calls_of("deleteWebhook")  # polling mode clears any webhook first


async def test_group_answers_mentions_replies_and_commands_only(
    fake, settings, redis, echo_engine
) -> None:
    async with running_adapter(settings, redis):
        ignored = [
            fake.send_text(GROUP, ALICE, "just chatting"),
            fake.send_text(GROUP, ALICE, "/help@other_bot"),
            fake.send_text(GROUP, ALICE, "/weather for another bot"),
        ]
        for uid in ignored:
            await handled(fake, uid)
        assert fake.messages_in(GROUP.id) == []

        mention = fake.message(GROUP, ALICE, "@parley_test_bot how are you?")
        fake.add_update({"message": mention})
        await fake.wait_for(lambda: len(fake.messages_in(GROUP.id)) == 1)
        first = fake.messages_in(GROUP.id)[0]
        assert first.text == "echo: how are you?"
        assert first.reply_to == mention["message_id"]  # groups: the reply quotes

        fake.send_text(GROUP, BOB, "and you?", reply_to=first.message_id)
        fake.send_text(GROUP, BOB, "/help@parley_test_bot")
        await fake.wait_for(lambda: len(fake.messages_in(GROUP.id)) == 3)
    replies = texts(fake, GROUP.id)
    assert "echo: and you?" in replies
    assert any(text.startswith("I'm Parley") for text in replies)
    assert len(echo_engine.served) == 2


async def test_forum_topics_are_answered_in_their_topic(fake, settings, redis, echo_engine) -> None:
    async with running_adapter(settings, redis):
        fake.send_text(FORUM, ALICE, "@parley_test_bot in a topic", thread_id=42)
        await fake.wait_for(lambda: len(fake.messages_in(FORUM.id)) == 1)
    [sent] = fake.messages_in(FORUM.id)
    assert sent.thread_id == 42 and sent.text == "echo: in a topic"
    assert echo_engine.served[0].request.conversation == f"telegram:{FORUM.id}/42:{ALICE.id}"


async def test_a_bare_mention_gets_a_short_note(fake, settings, redis, echo_engine) -> None:
    async with running_adapter(settings, redis):
        fake.send_text(GROUP, ALICE, "@parley_test_bot")
        await fake.wait_for(lambda: len(fake.messages_in(GROUP.id)) == 1)
    assert texts(fake, GROUP.id) == [EMPTY_MENTION_NOTE]
    assert echo_engine.served == []


async def test_each_command(fake, settings, redis, echo_engine, monkeypatch) -> None:
    # /forget also asks the trainer service, which does not run here: wait less for it.
    monkeypatch.setattr(commands, "CONTROL_TIMEOUT_S", 1.0)
    chat, admin_chat = private(ALICE), private(ADMIN)
    async with running_adapter(settings, redis):
        for command in ("/start", "/help", "/reset", "/forget", "/status", "/nonsense"):
            fake.send_text(chat, ALICE, command)
            n = len(fake.messages_in(ALICE.id)) + 1
            await fake.wait_for(lambda n=n: len(fake.messages_in(ALICE.id)) == n)
        for command in ("/model", "/rollback", "/help", "/retrain"):
            fake.send_text(admin_chat, ADMIN, command)
            n = len(fake.messages_in(ADMIN.id)) + 1
            await fake.wait_for(lambda n=n: len(fake.messages_in(ADMIN.id)) == n)
    start, help_, reset, forget, status, nonsense = texts(fake, ALICE.id)
    assert start == help_ and "/reset" in help_ and "/retrain" not in help_
    assert reset.startswith("Done") and forget.startswith("Done")
    assert status.startswith("No engine is answering")  # the echo engine sends no heartbeat
    assert nonsense == "I don't know /nonsense. Try /help."
    model, rollback, admin_help, retrain = texts(fake, ADMIN.id)
    assert retrain.startswith("The trainer service did not answer")  # none runs here
    assert model.startswith(("Model versions", "No trained versions"))
    assert "no earlier version" in rollback
    assert "/retrain" in admin_help
    controls = [d.request for d in echo_engine.served]
    assert [getattr(r, "command", None) for r in controls] == ["reset", "forget"]
    everyone = fake.commands[json.dumps({"type": "default"}, sort_keys=True)]
    assert [name for name, _ in everyone] == [s.name for s in COMMANDS if not s.admin]
    admins = fake.commands[json.dumps({"chat_id": ADMIN.id, "type": "chat"}, sort_keys=True)]
    assert {"retrain", "rollback", "model"} <= {name for name, _ in admins}


async def test_non_admin_retrain_is_refused(fake, settings, redis, echo_engine) -> None:
    async with running_adapter(settings, redis):
        fake.send_text(private(BOB), BOB, "/retrain")
        fake.send_text(GROUP, BOB, "/rollback@parley_test_bot v1")
        await fake.wait_for(lambda: fake.messages_in(BOB.id) and fake.messages_in(GROUP.id))
    assert texts(fake, BOB.id) == ["Only this bot's admins can use /retrain."]
    assert texts(fake, GROUP.id) == ["Only this bot's admins can use /rollback."]
    assert await redis.get(keys.TRAIN_LOCK) is None  # nothing started


def long_answer(request: Request) -> str:
    words = [f"word{i:04d}" for i in range(1200)]  # 1,200 x 9 - 1 = 10,799 characters
    return " ".join(words)[:10_000] if isinstance(request, ChatRequest) else ""


async def test_a_10000_character_reply_arrives_whole_in_three_messages(
    fake, settings, redis, redis_settings, echo_engine_cls
) -> None:
    async with (
        echo_engine_cls(redis, redis_settings, answer=long_answer),
        running_adapter(settings, redis),
    ):
        fake.send_text(private(ALICE), ALICE, "tell me everything")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 3)
    sent = texts(fake, ALICE.id)
    assert all(utf16_units(text) <= 4096 for text in sent)
    assert " ".join(sent).split() == long_answer(echo_request("")).split()
    assert fake.violations == []


def chinese_answer(request: Request) -> str:
    if not isinstance(request, ChatRequest):
        return ""
    return f"你说：{request.text}。" + "😀" * 2500  # emoji are 2 UTF-16 units each


async def test_chinese_in_and_out_split_by_utf16_units(
    fake, settings, redis, redis_settings, echo_engine_cls
) -> None:
    async with (
        echo_engine_cls(redis, redis_settings, answer=chinese_answer),
        running_adapter(settings, redis),
    ):
        fake.send_text(private(ALICE), ALICE, "你好，今天天气怎么样？")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 2)
    first, second = texts(fake, ALICE.id)
    assert first.startswith("你说：你好，今天天气怎么样？。😀")
    assert utf16_units(first) <= 4096 and len(first) < 4096  # counted in UTF-16, not chars
    assert first + second == chinese_answer(echo_request("你好，今天天气怎么样？"))


def echo_request(text: str) -> ChatRequest:
    return ChatRequest(id="x", conversation="x", reply_to="x", text=text)


async def test_a_429_storm_is_waited_out_and_counted(fake, settings, redis, echo_engine) -> None:
    before = retry_after_count()
    fake.flood(ALICE.id, retry_after=1, times=3)
    async with running_adapter(settings, redis):
        fake.send_text(private(ALICE), ALICE, "are you there?")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    assert texts(fake, ALICE.id) == ["echo: are you there?"]
    assert fake.violations == []  # no call came before Telegram's retry_after had passed
    assert retry_after_count() - before == 3


def retry_after_count() -> float:
    return counted("parley_telegram_retry_after")


def counted(name: str, **labels: str) -> float:
    """The sum of a counter's samples (over every adapter) whose labels include ``labels``."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == name:
            total += sum(
                s.value
                for s in metric.samples
                if s.name.endswith("_total") and labels.items() <= s.labels.items()
            )
    return total


async def test_non_text_updates_get_a_note_or_nothing(fake, settings, redis, echo_engine) -> None:
    fake.honour_allowed_updates = False  # a server that sends more than was asked for
    chat = private(ALICE)
    sticker = {
        "file_id": "s",
        "file_unique_id": "s",
        "width": 1,
        "height": 1,
        "is_animated": False,
        "is_video": False,
        "type": "regular",
    }
    photo = [{"file_id": "p", "file_unique_id": "p", "width": 1, "height": 1}]
    voice = {"file_id": "v", "file_unique_id": "v", "duration": 1}
    document = {"file_id": "d", "file_unique_id": "d"}
    async with running_adapter(settings, redis):
        noted = [
            fake.add_update({"message": fake.message(chat, ALICE, sticker=sticker)}),
            fake.add_update({"message": fake.message(chat, ALICE, photo=photo)}),
            fake.add_update({"message": fake.message(chat, ALICE, voice=voice)}),
            fake.add_update({"message": fake.message(chat, ALICE, document=document)}),
        ]
        silent = [
            fake.add_update(
                {"edited_message": {**fake.message(chat, ALICE, "edit"), "edit_date": 1}}
            ),
            fake.add_update({"channel_post": fake.message(GROUP, ALICE, "post")}),
            fake.add_update({"message": fake.message(GROUP, ALICE, new_chat_members=[BOB.json()])}),
            fake.add_update({"message": fake.message(GROUP, ALICE, left_chat_member=BOB.json())}),
            fake.add_update({"message": fake.message(GROUP, BOB, sticker=sticker)}),
            fake.add_update({"message": fake.message(chat, OTHER_BOT, "beep")}),
            fake.add_update({"message": fake.message(GROUP, OTHER_BOT, "@parley_test_bot beep")}),
            fake.add_update(
                {
                    "callback_query": {
                        "id": "cb1",
                        "from": ALICE.json(),
                        "chat_instance": "c",
                        "data": "x",
                    }
                }
            ),
        ]
        for uid in noted + silent:
            await handled(fake, uid)
        fake.send_text(chat, ALICE, "still there?")
        await fake.wait_for(lambda: texts(fake, ALICE.id)[-1:] == ["echo: still there?"])
    assert texts(fake, ALICE.id) == [MEDIA_NOTE] * 4 + ["echo: still there?"]
    assert fake.messages_in(GROUP.id) == []
    assert fake.answered_callbacks == ["cb1"]
    assert len(echo_engine.served) == 1


async def test_allowlist_refuses_other_chats_once(
    fake, redis_settings, tmp_path, redis, echo_engine
) -> None:
    settings = telegram_settings(fake, redis_settings, tmp_path, allowed_chats=[ALICE.id])
    async with running_adapter(settings, redis):
        first = fake.send_text(private(BOB), BOB, "hi?")
        second = fake.send_text(private(BOB), BOB, "hello??")
        await handled(fake, second)
        await handled(fake, first)
        fake.send_text(private(ALICE), ALICE, "hi")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
        await fake.wait_for(lambda: len(fake.messages_in(BOB.id)) == 1)
    assert texts(fake, BOB.id) == [
        "Sorry — this bot only talks in the chats its owner has allowed."
    ]
    assert [d.request.text for d in echo_engine.served] == ["hi"]


async def test_rate_limit_gives_one_notice_per_window(
    fake, redis_settings, tmp_path, redis, echo_engine
) -> None:
    settings = telegram_settings(fake, redis_settings, tmp_path, rate_limit="2/minute")
    async with running_adapter(settings, redis):
        uids = [fake.send_text(private(ALICE), ALICE, f"message {i}") for i in range(5)]
        for uid in uids:
            await handled(fake, uid)
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 3)
    sent = texts(fake, ALICE.id)
    assert sum("faster than I can answer" in text for text in sent) == 1
    assert len(echo_engine.served) == 2


async def test_over_long_message_gets_a_short_answer(
    fake, redis_settings, tmp_path, redis, echo_engine
) -> None:
    settings = telegram_settings(fake, redis_settings, tmp_path, max_message_chars=50)
    async with running_adapter(settings, redis):
        fake.send_text(private(ALICE), ALICE, "x" * 51)
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    assert texts(fake, ALICE.id) == [
        "That message is too long for me (51 characters; I read at most 50)."
    ]
    assert echo_engine.served == []


async def test_no_engine_means_a_short_human_reply(fake, redis_settings, tmp_path, redis) -> None:
    settings = telegram_settings(fake, redis_settings, tmp_path, reply_timeout_s=0.5)
    async with running_adapter(settings, redis):
        fake.send_text(private(ALICE), ALICE, "anyone?")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    assert texts(fake, ALICE.id) == [UNAVAILABLE_MESSAGE]
    assert (ALICE.id, "typing", None) in fake.actions


async def test_api_errors_end_one_reply_not_the_adapter(fake, settings, redis, echo_engine) -> None:
    network = counted("parley_telegram_api_errors", error="network")
    too_long = counted("parley_telegram_api_errors", error="too_long")
    fake.fail_next("sendMessage", BAD_GATEWAY, times=2)  # retried
    async with running_adapter(settings, redis):
        fake.send_text(private(ALICE), ALICE, "one")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
        fake.fail_next("sendMessage", TOO_LONG)  # refused: that reply is given up
        lost = fake.send_text(private(ALICE), ALICE, "two")
        await handled(fake, lost)
        await fake.wait_for(lambda: len(fake.calls_of("sendMessage")) == 4)  # 2 x 502, 1, 1
        fake.send_text(private(ALICE), ALICE, "three")
        await fake.wait_for(lambda: texts(fake, ALICE.id)[-1:] == ["echo: three"])
    assert texts(fake, ALICE.id) == ["echo: one", "echo: three"]
    assert counted("parley_telegram_api_errors", error="network") - network == 2
    assert counted("parley_telegram_api_errors", error="too_long") - too_long == 1


async def test_a_409_conflict_is_one_log_line(fake, settings, redis, echo_engine, caplog) -> None:
    fake.fail_next("getUpdates", CONFLICT, times=2)
    with caplog.at_level(logging.INFO, logger="adapters.telegram"):
        async with running_adapter(settings, redis):
            fake.send_text(private(ALICE), ALICE, "hi")
            await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    conflicts = [r for r in caplog.records if "409" in r.getMessage()]
    assert len(conflicts) == 1 and conflicts[0].exc_info is None
    assert "another program is polling" in conflicts[0].getMessage()


async def test_a_thumbs_up_on_a_reply_is_feedback_for_the_trainer(
    fake, settings, redis, echo_engine
) -> None:
    async with running_adapter(settings, redis):
        fake.send_text(private(ALICE), ALICE, "rate me")
        await fake.wait_for(lambda: len(fake.messages_in(ALICE.id)) == 1)
    # (stopped: the reply has finished, and its messages are remembered)
    [reply] = fake.messages_in(ALICE.id)
    async with running_adapter(settings, redis):
        reacted = [
            fake.add_update({"message_reaction": reaction(reply.message_id, emoji)})
            for emoji in ("👍", None)
        ]
        stray = fake.add_update({"message_reaction": reaction(reply.message_id + 100, "👍")})
        for uid in (*reacted, stray):
            await handled(fake, uid)
    entries = await redis.xrange(keys.TRAINER_REQUESTS)
    feedback = [decode_trainer_message(fields[keys.FIELD.encode()]) for _, fields in entries]
    assert [(f.request_id, f.value, f.user) for f in feedback] == [
        (echo_engine.served[0].request.id, 1, f"telegram:{ALICE.id}"),
        (echo_engine.served[0].request.id, 0, f"telegram:{ALICE.id}"),
    ]


def reaction(message_id: int, emoji: str | None) -> dict[str, object]:
    return {
        "chat": {"id": ALICE.id, "type": "private"},
        "message_id": message_id,
        "user": ALICE.json(),
        "date": 0,
        "old_reaction": [],
        "new_reaction": [{"type": "emoji", "emoji": emoji}] if emoji else [],
    }


async def test_a_full_queue_is_a_short_busy_reply(fake, redis_settings, tmp_path, redis) -> None:
    queue = redis_settings.model_copy(update={"max_stream_len": 10, "shards": 1})
    settings = telegram_settings(fake, queue, tmp_path, reply_timeout_s=1.0)
    users = [User(5000 + i, f"U{i}") for i in range(12)]  # no engine: the queue fills up
    async with running_adapter(settings, redis):
        for user in users:
            fake.send_text(private(user), user, "hello?")
        await fake.wait_for(lambda: len(fake.sent) == len(users))
    replies = [text for user in users for text in texts(fake, user.id)]
    assert replies.count(BUSY_MESSAGE) == 2
    assert replies.count(UNAVAILABLE_MESSAGE) == 10  # kept, but nobody answered in time
