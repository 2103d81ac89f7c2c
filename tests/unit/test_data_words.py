"""Word-level evaluation helpers on known inputs."""

from __future__ import annotations

import pytest

from engine.data import distinct_n, word_validity, word_vocabulary, words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Don't STOP me now!", ["don't", "stop", "me", "now"]),
        ("我爱北京 Tokyo 2024", ["我", "爱", "北", "京", "tokyo", "2024"]),
        ("snake_case — Ünïcode…", ["snake", "case", "ünïcode"]),
        ("Привет, мир", ["привет", "мир"]),
        ("ひらがな、カタカナ。", ["ひらがな", "カタカナ"]),
        ("👍 ... ??", []),
    ],
)
def test_words(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_word_vocabulary() -> None:
    assert word_vocabulary(["The cat", "the 猫!"]) == {"the", "cat", "猫"}


def test_word_validity() -> None:
    vocab = word_vocabulary(["the cat sat on the mat"])
    assert word_validity(["The dog sat", "cat cat"], vocab) == pytest.approx(4 / 5)
    assert word_validity(["zzq xqv"], vocab) == 0.0
    assert word_validity(["", "!!"], vocab) == 0.0
    assert word_validity(["你好"], word_vocabulary(["你们好"])) == 1.0


def test_distinct_n() -> None:
    assert distinct_n(["a b a b"], n=2) == pytest.approx(2 / 3)
    assert distinct_n(["a a b"], n=1) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "b a"], n=2) == 1.0  # n-grams never span two texts
    assert distinct_n(["same words", "same words"]) == 0.5
    assert distinct_n(["one"], n=2) == 0.0
    with pytest.raises(ValueError):
        distinct_n(["a"], n=0)
