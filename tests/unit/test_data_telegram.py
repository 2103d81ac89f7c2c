"""Telegram Desktop exports: single chat, whole account, bot marking, gaps and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.errors import DataError
from engine.data import parse_telegram, read_telegram

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
GROUP = FIXTURES / "telegram_group.json"


def test_group_chat_splits_on_the_hour_gap() -> None:
    convs = read_telegram(GROUP)
    assert [c.id for c in convs] == ["telegram:1876543210:2", "telegram:1876543210:12"]
    assert [len(c.messages) for c in convs] == [7, 4]
    assert {c.source for c in convs} == {"telegram"}
    assert [m.author for m in convs[0].messages] == [
        "user111", "user111", "user222", "user999", "user222", "user333", "user444",
    ]  # fmt: skip


def test_service_stickers_and_forwards_are_skipped_captions_kept() -> None:
    texts = [m.text for c in read_telegram(GROUP) for m in c.messages]
    assert "看这个截图" in texts  # a photo's caption is text
    assert not any("season 2" in t for t in texts)  # forwarded
    assert "" not in texts  # the sticker


def test_entity_list_text_is_joined_and_unicode_intact() -> None:
    first, second = read_telegram(GROUP)
    assert first.messages[2].text == "sure, after 9 — @alice check this!"
    assert first.messages[0].text == "hi all 👋"
    assert second.messages[0].text == "你好，今天怎么样？"
    assert second.messages[2].text == "日本語もOK print()"


def test_deleted_account_keeps_its_id() -> None:
    assert read_telegram(GROUP)[1].messages[1].author == "user555"


def test_no_message_is_a_bot_unless_named() -> None:
    assert not any(m.is_bot for c in read_telegram(GROUP) for m in c.messages)


def test_bot_names_match_display_name_case_insensitively() -> None:
    bots = [
        m.text
        for c in read_telegram(GROUP, bot_names=["parleybot"])
        for m in c.messages
        if m.is_bot
    ]
    assert bots == ["I can keep score 🎲"]  # "Helperbot" and via_bot messages stay human


@pytest.mark.parametrize("bot_id", ["999", 999, "user999"])
def test_bot_ids_match_from_id(bot_id: str | int) -> None:
    convs = read_telegram(GROUP, bot_ids=[bot_id])
    bots = [m.text for c in convs for m in c.messages if m.is_bot]
    assert bots == ["I can keep score 🎲", "Noted."]


def test_gap_is_a_setting() -> None:
    assert len(read_telegram(GROUP, gap_s=4 * 3600)) == 1
    assert len(read_telegram(GROUP, gap_s=30)) > 2


def test_whole_account_export() -> None:
    convs = read_telegram(FIXTURES / "telegram_account.json")
    # saved messages and the channel are skipped; the left group (old export without
    # date_unixtime) still splits on its 2.5 h gap.
    assert [c.id for c in convs] == ["telegram:222:10", "telegram:444:7", "telegram:444:8"]
    assert convs[0].messages[0].text == "Привет! Как дела?"
    assert convs[0].messages[2].text == "see https://example.org"
    assert convs[1].messages[0].timestamp == "2019-06-01T10:00:00"


def test_truncated_export_names_file_and_line() -> None:
    path = FIXTURES / "broken_telegram_truncated.json"
    with pytest.raises(DataError) as info:
        read_telegram(path)
    assert info.value.path == str(path)
    assert info.value.line is not None


def test_wrong_type_names_file_and_field() -> None:
    path = FIXTURES / "broken_telegram_wrong_type.json"
    with pytest.raises(DataError) as info:
        read_telegram(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "$.messages[3].text" in info.value.reason


@pytest.mark.parametrize(
    "document",
    [
        {"name": "x", "type": "personal_chat", "id": 1},  # neither messages nor chats
        {"name": "x", "type": "personal_chat", "id": 1, "messages": [
            {"id": 1, "type": "message", "date": "yesterday", "from": "a", "from_id": "user1",
             "text": "hi"},
        ]},
        [1, 2, 3],
    ],
)  # fmt: skip
def test_unreadable_documents(document: object) -> None:
    with pytest.raises(DataError) as info:
        parse_telegram(json.dumps(document).encode(), "result.json")
    assert str(info.value).startswith("result.json")
