"""What the Telegram adapter makes of an update (pure: python-telegram-bot objects, no network)."""

from __future__ import annotations

from typing import Any

import pytest
from telegram import Update

from adapters.telegram.updates import (
    BotIdentity,
    conversation_key,
    read_update,
    request_id,
)
from tests.fakes.telegram_api import Chat, FakeBotAPI, User

ME = BotIdentity(123456, "parley_test_bot")
ALICE = User(1001, "Alice", "alice")
DM = Chat(ALICE.id)
GROUP = Chat(-100777, "supergroup", "Friends")


@pytest.fixture
def api() -> FakeBotAPI:
    """Only its message builder is used (Telegram's JSON, entities in UTF-16 offsets)."""
    return FakeBotAPI()


def update(body: dict[str, Any], update_id: int = 7) -> Update:
    parsed = Update.de_json({"update_id": update_id, **body}, None)
    assert parsed is not None
    return parsed


def message(api: FakeBotAPI, chat: Chat, text: str | None, **kw: Any) -> Update:
    return update({"message": api.message(chat, ALICE, text, **kw)})


def test_private_text_is_a_chat_message(api) -> None:
    decision = read_update(message(api, DM, "hello"), ME)
    assert decision.action == "chat" and decision.message is not None
    assert decision.message.text == "hello" and not decision.message.group


def test_group_text_needs_a_mention_a_reply_or_a_command(api) -> None:
    assert read_update(message(api, GROUP, "hello all"), ME).action == "ignore"
    assert read_update(message(api, GROUP, "hi @someone_else"), ME).action == "ignore"
    mentioned = read_update(message(api, GROUP, "hey @Parley_Test_Bot what's up"), ME)
    assert mentioned.action == "chat" and mentioned.message is not None
    assert mentioned.message.text == "hey what's up"
    assert read_update(message(api, GROUP, "/help"), ME).action == "command"


def test_a_reply_to_the_bot_addresses_it(api) -> None:
    reply = api.message(GROUP, ALICE, "sure?")
    reply["reply_to_message"] = {
        "message_id": 5,
        "from": api.bot.json(),
        "chat": GROUP.json(),
        "date": 0,
        "text": "yes",
    }
    assert read_update(update({"message": reply}), ME).action == "chat"


def test_mentions_after_emoji_are_found_by_utf16_offsets(api) -> None:
    decision = read_update(message(api, GROUP, "😀😀 @parley_test_bot 你好"), ME)
    assert decision.action == "chat" and decision.message is not None
    assert decision.message.text == "😀😀 你好"


def test_commands_for_another_bot_are_ignored(api) -> None:
    assert read_update(message(api, GROUP, "/help@other_bot"), ME).action == "ignore"
    assert read_update(message(api, DM, "/help@other_bot"), ME).action == "ignore"
    mine = read_update(message(api, GROUP, "/ROLLBACK@parley_test_bot v3"), ME)
    assert mine.action == "command" and mine.message is not None
    assert (mine.message.command, mine.message.text) == ("rollback", "v3")


def test_unknown_commands_are_answered_only_where_meant_for_the_bot(api) -> None:
    assert read_update(message(api, GROUP, "/weather"), ME).action == "ignore"
    assert read_update(message(api, DM, "/weather"), ME).action == "command"


def test_forum_topics_and_keys(api) -> None:
    body = {"message": api.message(GROUP, ALICE, "@parley_test_bot hi", thread_id=9)}
    decision = read_update(update(body), ME)
    assert decision.message is not None and decision.message.thread_id == 9
    assert conversation_key(decision.message) == f"telegram:{GROUP.id}/9:{ALICE.id}"
    redelivered = read_update(update(body), ME).message
    other = read_update(update(body, update_id=8), ME).message
    assert redelivered is not None and other is not None
    assert request_id(ME.id, redelivered) == request_id(ME.id, decision.message)
    assert request_id(ME.id, other) != request_id(ME.id, decision.message)


@pytest.mark.parametrize(
    ("body", "action", "kind"),
    [
        (
            {
                "sticker": {
                    "file_id": "s",
                    "file_unique_id": "s",
                    "width": 1,
                    "height": 1,
                    "is_animated": False,
                    "is_video": False,
                    "type": "regular",
                }
            },
            "note",
            "sticker",
        ),
        ({"voice": {"file_id": "v", "file_unique_id": "v", "duration": 1}}, "note", "voice"),
        (
            {"new_chat_members": [{"id": 5, "is_bot": False, "first_name": "B"}]},
            "ignore",
            "service",
        ),
    ],
)
def test_non_text_messages_in_private(api, body, action, kind) -> None:
    decision = read_update(update({"message": api.message(DM, ALICE, None, **body)}), ME)
    assert (decision.action, decision.kind) == (action, kind)


def test_other_update_kinds_and_bots(api) -> None:
    edited = {**api.message(DM, ALICE, "x"), "edit_date": 1}
    assert read_update(update({"edited_message": edited}), ME).action == "ignore"
    assert (
        read_update(update({"channel_post": api.message(GROUP, ALICE, "x")}), ME).action == "ignore"
    )
    bot = User(99, "Bot", "some_bot", is_bot=True)
    from_bot = update({"message": api.message(DM, bot, "hi")})
    assert read_update(from_bot, ME).kind == "from_bot"
    query = {"id": "q", "from": ALICE.json(), "chat_instance": "c", "data": "d"}
    decision = read_update(update({"callback_query": query}), ME)
    assert (decision.action, decision.callback_id) == ("callback", "q")


@pytest.mark.parametrize(
    ("emoji", "value"), [(["👍"], 1), (["👎"], -1), (["🔥"], 0), ([], 0), (["🔥", "👍"], 1)]
)
def test_reactions_become_feedback_values(emoji: list[str], value: int) -> None:
    body = {
        "chat": DM.json(),
        "message_id": 3,
        "user": ALICE.json(),
        "date": 0,
        "old_reaction": [],
        "new_reaction": [{"type": "emoji", "emoji": e} for e in emoji],
    }
    decision = read_update(update({"message_reaction": body}), ME)
    assert decision.action == "reaction" and decision.reaction is not None
    assert (decision.reaction.message_id, decision.reaction.value) == (3, value)


def test_anonymous_reactions_are_ignored() -> None:
    body = {
        "chat": GROUP.json(),
        "message_id": 3,
        "actor_chat": GROUP.json(),
        "date": 0,
        "old_reaction": [],
        "new_reaction": [],
    }
    assert read_update(update({"message_reaction": body}), ME).action == "ignore"
