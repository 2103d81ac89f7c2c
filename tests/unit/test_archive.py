"""The conversation archive: idempotent archiving, consent, feedback, and the JSONL export the
trainer reads (read back with the trainer's own reader)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from bot.archive import Archive, ArchivedMessage, chat_of
from bot.wire import Exchange
from engine.data import format_conversations, read_jsonl


def exchange(n: int, user: str = "u1", chat: str = "c1", platform: str = "discord") -> Exchange:
    return Exchange(
        request_id=f"r{n}",
        conversation=f"{platform}:{chat}:{user}",
        platform=platform,
        user=user,
        prompt=f"question {n} from {user}",
        reply=f"answer {n}",
        model_version="v0001",
        created_ms=1_700_000_000_000 + n * 1000,
    )


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    a = Archive(tmp_path / "archive.sqlite3")
    yield a
    a.close()


def test_an_exchange_logged_twice_is_stored_once(archive: Archive) -> None:
    assert archive.add_exchanges([exchange(1), exchange(2)]) == 4
    assert archive.add_exchanges([exchange(2), exchange(1), exchange(3)]) == 2
    assert archive.total() == 6


def test_the_archive_is_in_wal_mode(archive: Archive) -> None:
    with sqlite3.connect(archive.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_opted_out_users_are_not_archived_and_opt_in_resumes(archive: Archive) -> None:
    archive.opt_out("u2")
    assert archive.add_exchanges([exchange(1, "u1"), exchange(2, "u2")]) == 2
    assert archive.count_user("u2") == 0
    archive.opt_in("u2")
    assert archive.add_exchanges([exchange(3, "u2")]) == 2
    assert archive.count_user("u2") == 2


def test_forget_deletes_every_row_of_the_user_and_opts_them_out(archive: Archive) -> None:
    archive.add_exchanges([exchange(1, "u1"), exchange(2, "u2"), exchange(3, "u1")])
    forgotten = archive.forget("u1")
    assert (forgotten.messages, forgotten.replies) == (2, 2)
    assert archive.count_user("u1") == 0
    assert archive.count_user("u2") == 2
    assert "u1" in archive.opted_out()
    assert archive.add_exchanges([exchange(4, "u1")]) == 0


def test_export_is_read_by_the_trainer_and_honours_consent(
    archive: Archive, tmp_path: Path
) -> None:
    archive.add_exchanges([exchange(1, "u1"), exchange(2, "u2"), exchange(3, "u1")])
    archive.opt_out("u2")
    stats = archive.export(tmp_path / "out.jsonl")
    conversations = read_jsonl(tmp_path / "out.jsonl")
    assert stats.conversations == len(conversations) == 1
    texts = [m.text for c in conversations for m in c.messages]
    assert texts == ["question 1 from u1", "question 3 from u1"]  # no u2, no unrated replies
    assert stats.platforms == ("discord",)
    assert stats.first_ms == exchange(1).created_ms


def test_bot_replies_are_exported_only_when_marked_good(archive: Archive, tmp_path: Path) -> None:
    archive.add_exchanges([exchange(1), exchange(2)])
    assert archive.set_feedback("r1", 1)
    assert archive.set_feedback("r2", -1)
    archive.export(tmp_path / "good.jsonl", bot_replies="good")
    (conv,) = read_jsonl(tmp_path / "good.jsonl")
    assert [m.text for m in conv.messages] == [
        "question 1 from u1",
        "answer 1",
        "question 2 from u1",
    ]
    text = format_conversations([conv], include_bot=False, min_turns=2)[0]
    assert "answer 1" in text and "answer 2" not in text
    archive.export(tmp_path / "never.jsonl", bot_replies="never")
    (conv,) = read_jsonl(tmp_path / "never.jsonl")
    assert "answer 1" not in [m.text for m in conv.messages]


def test_feedback_before_the_reply_is_archived_is_applied_on_arrival(
    archive: Archive, tmp_path: Path
) -> None:
    assert not archive.set_feedback("r1", 1)
    archive.add_exchanges([exchange(1)])
    archive.export(tmp_path / "out.jsonl")
    (conv,) = read_jsonl(tmp_path / "out.jsonl")
    assert "answer 1" in [m.text for m in conv.messages]
    with pytest.raises(ValueError, match="feedback"):
        archive.set_feedback("r1", 5)


def test_good_replies_are_weighted_inside_their_conversation(
    archive: Archive, tmp_path: Path
) -> None:
    archive.add_exchanges([exchange(1), exchange(2)])
    archive.set_feedback("r1", 1)
    stats = archive.export(tmp_path / "out.jsonl", good_reply_weight=3)
    (conv,) = read_jsonl(tmp_path / "out.jsonl")
    texts = [m.text for m in conv.messages]
    assert texts == ["question 1 from u1", "answer 1"] * 3 + ["question 2 from u1"]
    assert stats.conversations == 1 and stats.messages == 7


def test_a_long_silence_starts_a_new_conversation_with_a_stable_id(
    archive: Archive, tmp_path: Path
) -> None:
    early, late = exchange(1), exchange(2)
    late = msgspec.structs.replace(late, created_ms=early.created_ms + 7200_000)
    archive.add_exchanges([early, late])
    archive.export(tmp_path / "a.jsonl")
    first = [c.id for c in read_jsonl(tmp_path / "a.jsonl")]
    archive.add_exchanges([exchange(3)])
    archive.export(tmp_path / "b.jsonl")
    second = [c.id for c in read_jsonl(tmp_path / "b.jsonl")]
    assert first == ["discord:c1:r1", "discord:c1:r2"]
    assert second == first


def test_stats_count_messages_per_platform_chat_and_day(archive: Archive) -> None:
    archive.add_exchanges([exchange(1, chat="a"), exchange(2, chat="b", platform="telegram")])
    archive.add([ArchivedMessage("imp-1", "user", "telegram", "b", "u9", "telegram:b:u9", "hi", 0)])
    assert archive.stats() == [
        ("discord", "a", "2023-11-14", 2),
        ("telegram", "b", "1970-01-01", 1),
        ("telegram", "b", "2023-11-14", 2),
    ]


def test_chat_of_context_keys() -> None:
    assert chat_of("discord:123:42", "discord") == "123"
    assert chat_of("web:abc:abc", "web") == "abc"
    assert chat_of("api:scope", "api") == "scope"


def test_an_unwritable_archive_is_a_clear_error(tmp_path: Path) -> None:
    from bot.archive import ArchiveError

    (tmp_path / "file").write_text("x")
    with pytest.raises(ArchiveError, match="cannot open the archive"):
        Archive(tmp_path / "file" / "archive.sqlite3")
