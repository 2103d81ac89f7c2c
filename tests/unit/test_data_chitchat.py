"""The bundled chitchat corpus: layout on a small sample, then the real thing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bot.errors import DataError
from engine.data import format_conversation, load_sources, read_chitchat

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def test_sample_is_sorted_flattened_and_blank_free() -> None:
    convs = read_chitchat(FIXTURES / "chitchat_sample.json")
    assert [c.id for c in convs] == [
        "chitchat:a0000000-0000-4000-8000-000000000001",
        "chitchat:b7c1e0aa-0000-4000-8000-000000000002",
    ]
    second = convs[1]
    assert [(m.author, m.text) for m in second.messages] == [
        ("s-1", "Hello"),
        ("s-1", "How are you doing today?"),
        ("s-2", "im doing good"),
    ]
    assert format_conversation(second) == (
        "<|user|>Hello\nHow are you doing today?<|eot|><|bot|>im doing good<|eot|>"
    )


def test_missing_package_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="chitchat-dataset"):
        read_chitchat()


def test_wrong_layout_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text('{"x": {"messages": [{"text": "not nested in a turn"}]}}')
    with pytest.raises(DataError, match=r"messages\[0\]"):
        read_chitchat(path)


@pytest.mark.slow
def test_real_corpus_loads_through_the_spec() -> None:
    convs = load_sources(["chitchat"])  # about a second: 40 MB of JSON
    assert len(convs) > 7000
    assert {c.source for c in convs} == {"chitchat"}
    ids = [c.id for c in convs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(c.messages for c in convs)
    assert not any(m.is_bot for m in convs[0].messages)
