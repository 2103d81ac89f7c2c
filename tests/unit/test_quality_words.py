"""Strict word validity, reply length and distinct-n."""

from __future__ import annotations

import pytest

from engine.quality.words import measure_replies, strict_vocabulary, word_counts


def test_words_need_three_occurrences_and_markers_are_not_words() -> None:
    counts = word_counts(["<|user|>hello there<|eot|>"] * 3 + ["<|bot|>rare word<|eot|>"])
    assert counts["hello"] == 3 and "user" not in counts and "eot" not in counts
    vocab = strict_vocabulary(counts)
    assert {"hello", "there"} <= vocab
    assert "rare" not in vocab and "word" not in vocab


def test_short_words_count_only_when_common() -> None:
    # "i" is 40% of the words; "th" is 3 occurrences in 10,000 + words: a typo's share.
    text = ["i think so " * 4000 + "th " * 3]
    vocab = strict_vocabulary(word_counts(text))
    assert {"i", "so", "think"} <= vocab
    assert "th" not in vocab
    # The same three "th" in a text where they are a common word's share count.
    assert "th" in strict_vocabulary(word_counts(["th th th okay"]))


def test_a_han_character_is_a_word_not_a_short_fragment() -> None:
    vocab = strict_vocabulary(word_counts(["我 " * 3 + "hello " * 100000]))
    assert "我" in vocab


def test_measures_of_replies() -> None:
    vocab = strict_vocabulary(word_counts(["the cat sat on the mat " * 3]))
    got = measure_replies(["the cat sat", "zzq the"], vocab)
    assert got.word_validity == pytest.approx(4 / 5)
    assert got.reply_chars == pytest.approx((11 + 7) / 2)
    assert got.distinct_1 == pytest.approx(4 / 5)
    assert got.distinct_2 == pytest.approx(3 / 3)
    assert got.replies == 2
    empty = measure_replies([], vocab)
    assert empty.word_validity == 0.0 and empty.reply_chars == 0.0


def test_min_count_must_be_positive() -> None:
    with pytest.raises(ValueError):
        strict_vocabulary(word_counts(["a"]), min_count=0)
