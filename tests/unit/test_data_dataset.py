"""Loading --data specs by content, and the stable by-conversation train/validation split."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import DataError
from engine.data import (
    Conversation,
    Message,
    describe,
    detect_kind,
    load_sources,
    split_by_gap,
    split_conversations,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
ROOT = Path(__file__).resolve().parents[2]


def make(n: int, prefix: str = "c") -> list[Conversation]:
    return [Conversation(f"{prefix}{i}", (Message("a", f"text {i}"),), "test") for i in range(n)]


def ids(convs: list[Conversation]) -> set[str]:
    return {c.id for c in convs}


def test_split_is_by_conversation_and_complete() -> None:
    convs = make(400)
    train, val = split_conversations(convs, val_fraction=0.1, seed=7)
    assert ids(train).isdisjoint(ids(val))
    assert ids(train) | ids(val) == ids(convs)
    assert 15 <= len(val) <= 70
    assert [c.id for c in train] == [c.id for c in convs if c.id in ids(train)]  # order kept


def test_split_is_deterministic_and_order_independent() -> None:
    convs = make(200)
    shuffled = convs[:]
    random.Random(1).shuffle(shuffled)
    assert ids(split_conversations(convs)[1]) == ids(split_conversations(shuffled)[1])


def test_split_is_stable_when_conversations_are_added() -> None:
    old = make(300)
    grown = old + make(300, prefix="new")
    old_train, old_val = split_conversations(old, val_fraction=0.1)
    new_train, new_val = split_conversations(grown, val_fraction=0.1)
    assert ids(old_val) <= ids(new_val)
    assert ids(old_train) <= ids(new_train)


def test_split_seed_and_edges() -> None:
    convs = make(300)
    assert ids(split_conversations(convs, 0.1, seed=1)[1]) != ids(
        split_conversations(convs, 0.1, seed=2)[1]
    )
    assert split_conversations(convs, 0.0)[1] == []
    assert len(split_conversations(make(3), 0.01)[1]) == 1  # tiny data still gets a val set
    with pytest.raises(ValueError):
        split_conversations(convs, 1.0)


def test_duplicate_ids_land_on_the_same_side() -> None:
    convs = make(100) + make(100)
    train, val = split_conversations(convs, 0.2)
    assert ids(train).isdisjoint(ids(val))


def test_load_sources_detects_each_format() -> None:
    convs = load_sources(
        [
            str(FIXTURES / "telegram_group.json"),
            str(FIXTURES / "discord_channel.json"),
            str(FIXTURES / "conversations.jsonl"),
        ],
        bot_names=["ParleyBot"],
        opted_out=["user222"],
    )
    assert describe(convs) == {
        "telegram.conversations": 2,
        "telegram.messages": 11,
        "discord.conversations": 2,
        "discord.messages": 7,
        "archive.conversations": 2,
        "archive.messages": 6,
        "jsonl.conversations": 1,
        "jsonl.messages": 2,
    }
    assert any(m.is_bot for m in convs[0].messages)
    assert all("user222" in c.opted_out_authors for c in convs)


def test_load_sources_drops_a_source_given_twice() -> None:
    path = str(FIXTURES / "discord_channel.json")
    assert len(load_sources([path, path])) == 2


def test_detection_is_by_content(tmp_path: Path) -> None:
    disguised = tmp_path / "archive.json"  # JSONL under a .json name
    shutil.copy(FIXTURES / "conversations.jsonl", disguised)
    assert len(load_sources([str(disguised)])) == 3
    one_line = tmp_path / "one.txt"
    one_line.write_text('{"id": "x", "messages": [{"author": "a", "text": "b"}]}\n')
    assert detect_kind(one_line.read_bytes(), str(one_line)) == "jsonl"
    export_dir = tmp_path / "ChatExport_2024-03-10"
    export_dir.mkdir()
    shutil.copy(FIXTURES / "telegram_group.json", export_dir / "result.json")
    assert len(load_sources([str(export_dir)])) == 2


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("not_conversations.json", None),
        ("broken_telegram_truncated.json", 41),
        ("broken_discord_wrong_type.json", None),
        ("broken_wrong_type.jsonl", 2),
        ("missing.json", None),
    ],
)
def test_load_sources_errors_name_the_file(name: str, line: int | None) -> None:
    with pytest.raises(DataError) as info:
        load_sources([str(FIXTURES / name)])
    assert info.value.path.endswith(name)
    assert info.value.line == line


def test_a_folder_without_result_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"result\.json"):
        load_sources([str(tmp_path)])


def test_split_by_gap_sorts_and_cuts() -> None:
    items = [(100.0, "c"), (0.0, "a"), (10.0, "b"), (5000.0, "d")]
    assert list(split_by_gap(items, 3600)) == [["a", "b", "c"], ["d"]]
    assert list(split_by_gap([], 3600)) == []
    with pytest.raises(ValueError):
        list(split_by_gap(items, 0))


def test_with_opted_out() -> None:
    c = make(1)[0]
    assert c.with_opted_out([]) is c
    assert c.with_opted_out(["x"]).with_opted_out(["y"]).opted_out_authors == {"x", "y"}


def test_data_layer_imports_no_torch() -> None:
    code = "import sys, engine.data; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0
