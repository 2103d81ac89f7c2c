"""DiscordChatExporter JSON: kept and skipped messages, isBot, offsets, gaps, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.errors import DataError
from engine.data import parse_discord, read_discord

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
CHANNEL = FIXTURES / "discord_channel.json"
ALICE, BOB, CAROL = "100000000000000001", "100000000000000002", "100000000000000003"
PARLEY, MEE6 = "200000000000000001", "200000000000000002"


def test_channel_splits_into_conversations() -> None:
    convs = read_discord(CHANNEL)
    assert [c.id for c in convs] == [
        "discord:810000000000000001:1230000000000000002",
        "discord:810000000000000001:1230000000000000009",
    ]
    assert {c.source for c in convs} == {"discord"}
    # 20:50+02:00 is 18:50 UTC, 47 minutes after Carol: same conversation.
    assert [m.author for m in convs[0].messages] == [ALICE, BOB, PARLEY, CAROL, ALICE]
    assert [m.author for m in convs[1].messages] == [BOB, MEE6]


def test_system_and_attachment_only_messages_are_skipped() -> None:
    texts = [m.text for c in read_discord(CHANNEL) for m in c.messages]
    assert "Joined the server." not in texts
    assert "Pinned a message." not in texts
    assert "" not in texts


def test_is_bot_comes_from_the_author() -> None:
    flags = {m.author: m.is_bot for c in read_discord(CHANNEL) for m in c.messages}
    assert flags == {ALICE: False, BOB: False, CAROL: False, PARLEY: True, MEE6: True}


def test_extra_bot_ids_and_names() -> None:
    convs = read_discord(CHANNEL, bot_ids=[int(BOB)], bot_names=["キャロル"])
    flags = {m.author: m.is_bot for c in convs for m in c.messages}
    assert flags[BOB] and flags[CAROL] and not flags[ALICE]


def test_unicode_and_timestamps_intact() -> None:
    first = read_discord(CHANNEL)[0]
    assert first.messages[3].text == "ビルドは速いですね"
    assert first.messages[3].timestamp == "2024-05-01T18:03:10.1234567+00:00"
    assert first.messages[4].text == "後で話そう 😊"


def test_newest_first_export_gives_the_same_conversations() -> None:
    document = json.loads(CHANNEL.read_text(encoding="utf-8"))
    document["messages"].reverse()
    reversed_convs = parse_discord(json.dumps(document).encode(), "rev.json")
    assert reversed_convs == read_discord(CHANNEL)


def test_truncated_export_names_file_and_line() -> None:
    path = FIXTURES / "broken_discord_truncated.json"
    with pytest.raises(DataError) as info:
        read_discord(path)
    assert info.value.path == str(path)
    assert info.value.line is not None


def test_wrong_type_names_file_and_field() -> None:
    path = FIXTURES / "broken_discord_wrong_type.json"
    with pytest.raises(DataError) as info:
        read_discord(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "$.messages[2].author.isBot" in info.value.reason


def test_bad_timestamp() -> None:
    document = json.loads(CHANNEL.read_text(encoding="utf-8"))
    document["messages"][1]["timestamp"] = "last tuesday"
    with pytest.raises(DataError, match=r"messages\[1\]"):
        parse_discord(json.dumps(document).encode(), "c.json")
