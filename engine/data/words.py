"""Word-level measures of generated text, for evaluating character and BPE models.

A character model can produce fluent-looking strings of non-words; loss alone does not show
it. ``word_validity`` is the share of generated words that occur in the training data's
vocabulary, ``distinct_n`` the share of distinct n-grams (low means the model repeats itself).

Words are runs of letters and digits (any script, apostrophes inside kept: "don't"),
lowercased. Han characters count as one word each, since Chinese (and Japanese kanji) text
has no spaces to split on and a single character is the closest unit to a word there.
Kana, Hangul and other scripts use the letter runs. Punctuation and emoji are not words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# CJK Unified Ideographs and Extension A, Compatibility Ideographs, Extensions B-H.
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f\U00030000-\U000323af"
# One Han character, or a run of word characters (no underscore, no Han) with inner
# apostrophes ("don't", "l’homme").
_WORD = re.compile(f"[{_HAN}]|[^\\W_{_HAN}]+(?:['’][^\\W_{_HAN}]+)*")


def words(text: str) -> list[str]:
    """The lowercased words of ``text`` in order (see the module docstring for "word")."""
    return [w.lower() for w in _WORD.findall(text)]


def word_vocabulary(texts: Iterable[str]) -> set[str]:
    """Every word occurring in ``texts``: the reference vocabulary for :func:`word_validity`."""
    vocabulary: set[str] = set()
    for text in texts:
        vocabulary.update(words(text))
    return vocabulary


def word_validity(generated_texts: Iterable[str], vocab: set[str] | frozenset[str]) -> float:
    """The share of generated words found in ``vocab``, in [0, 1].

    Counted over word occurrences, not distinct words. ``0.0`` when nothing was generated:
    an empty output shows no command of the language, so it must not score as perfect.
    """
    total = valid = 0
    for text in generated_texts:
        for word in words(text):
            total += 1
            valid += word in vocab
    return valid / total if total else 0.0


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams (Li et al., 2016), n-grams taken within each text.

    ``0.0`` when the texts hold no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        tokens = words(text)
        for i in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0
