"""Parley JSONL: reading the fixture, line-numbered errors, and a lossless round trip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.errors import DataError
from engine.data import Conversation, Message, read_jsonl, write_jsonl
from engine.data.jsonl import iter_jsonl

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def test_reads_fixture_skipping_blank_lines() -> None:
    convs = read_jsonl(FIXTURES / "conversations.jsonl")
    assert [c.id for c in convs] == ["archive:web:1", "archive:telegram:2", "handwritten-3"]
    first, second, third = convs
    assert first.source == "archive"
    assert [m.is_bot for m in first.messages] == [False, True, False]
    assert first.messages[0].timestamp == "2024-05-01T10:00:00+00:00"
    assert second.messages[0].text == "今天天气很好"
    assert second.messages[1].text == "是啊 ☀️ let's go outside"
    assert second.messages[1].timestamp is None
    assert second.opted_out_authors == frozenset({"u3"})
    assert third.source == "jsonl"  # the default when a hand-written line leaves it out
    assert third.messages[1].text == "Tudo ótimo\nе тебе? (mixing languages is fine)"


def test_truncated_line_names_file_and_line() -> None:
    path = FIXTURES / "broken_truncated.jsonl"
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert info.value.path == str(path)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: ")


def test_wrong_type_names_line_and_field() -> None:
    with pytest.raises(DataError) as info:
        read_jsonl(FIXTURES / "broken_wrong_type.jsonl")
    assert info.value.line == 2
    assert "$.messages[0].text" in info.value.reason


def test_streaming_reader_yields_good_lines_before_the_bad_one() -> None:
    it = iter_jsonl(FIXTURES / "broken_wrong_type.jsonl")
    assert next(it).id == "ok-1"
    with pytest.raises(DataError):
        next(it)


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (b'{"id": "a", "messages": []}\n\xff\xfe\n', 2),
        (b'{"id": "", "messages": []}\n', 1),
        (b'{"messages": []}\n', 1),
        (b"[1, 2]\n", 1),
    ],
)
def test_bad_records(tmp_path: Path, content: bytes, line: int) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert info.value.line == line


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_jsonl(tmp_path / "nope.jsonl")
    assert info.value.line is None
    assert "nope.jsonl" in str(info.value)


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "messages": [{"author": "x", "text": "y"}]}\r\n')
    assert read_jsonl(path)[0].messages == (Message("x", "y"),)


def test_round_trip_is_lossless(tmp_path: Path) -> None:
    convs = [
        Conversation(
            "c1",
            (
                Message("u1", "héllo\nwörld 你好 🎉", False, "2024-01-01T00:00:00Z"),
                Message("bot", 'quote " and \\ backslash', True, None),
            ),
            "archive",
            frozenset({"u9", "u2"}),
        ),
        Conversation("c2", (), "discord"),
    ]
    path = tmp_path / "out" / "archive.jsonl"
    assert write_jsonl(path, convs) == 2
    raw = path.read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n")
    assert "你好".encode() in raw  # UTF-8 as is, not \u escapes
    assert read_jsonl(path) == convs


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    write_jsonl(path, [Conversation("old", (Message("a", "b"),), "archive")])

    def conversations() -> Iterator[Conversation]:
        yield Conversation("new", (Message("a", "c"),), "archive")
        raise RuntimeError("the archive failed mid-export")

    with pytest.raises(RuntimeError):
        write_jsonl(path, conversations())
    assert [c.id for c in read_jsonl(path)] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.jsonl"]
