"""Strict word validity, reply length and distinct-n: how generated replies read.

The loose measure (every word that occurs anywhere in the training text counts as valid)
scores nearly everything: chat text holds typos, single letters and two-letter fragments,
so a model that writes "th" or "wo" is never caught. The strict vocabulary keeps a word
only if

- it occurs at least ``min_count`` (3) times in the training text, and
- it is longer than two characters, or is a *common* short word: at least
  ``short_min_share`` (3 in every 10,000) of the training text's words. On the chitchat
  corpus that keeps "i", "a", "to", "it", "ok", "hi", "ya" … and drops "th", "d", "xd".

Han characters are words of one character each (see :mod:`engine.data.words`) and are not
short words in this sense: for them only the count applies.

Words are :func:`engine.data.words.words` (lowercased letter/digit runs); role markers must
be removed from training text before counting (:func:`strict_vocabulary` does it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from engine.data.formatting import SPECIAL_TOKENS
from engine.data.words import distinct_n, word_validity, words

MIN_COUNT = 3
"""Occurrences in the training text a word needs to count as valid."""
SHORT_MIN_SHARE = 3e-4
"""Share of the training text's words a one- or two-character word needs to count."""

_SPECIAL_RE = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS))
_HAN_CHAR = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af]")


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """How often each word occurs in ``texts``, role markers removed."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words(_SPECIAL_RE.sub(" ", text)))
    return counts


def strict_vocabulary(
    counts: Counter[str],
    *,
    min_count: int = MIN_COUNT,
    short_min_share: float = SHORT_MIN_SHARE,
) -> frozenset[str]:
    """The words a generated reply may use (see the module docstring for the rule)."""
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    total = sum(counts.values())
    short_min = max(min_count, short_min_share * total)
    return frozenset(
        word
        for word, n in counts.items()
        if n >= min_count and (not _is_short(word) or n >= short_min)
    )


def _is_short(word: str) -> bool:
    return len(word) <= 2 and not _HAN_CHAR.fullmatch(word)


@dataclass(frozen=True)
class ReplyMeasures:
    """Word-level figures over a set of generated replies."""

    word_validity: float
    """Share of the replies' words in the strict vocabulary (0.0 when there are no words)."""
    reply_chars: float
    """Mean characters per reply (a reply of 0 characters counts)."""
    distinct_1: float
    distinct_2: float
    replies: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def measure_replies(replies: Sequence[str], vocabulary: frozenset[str]) -> ReplyMeasures:
    """Strict word validity, mean length and distinct-1/2 of ``replies``."""
    return ReplyMeasures(
        word_validity=word_validity(replies, vocabulary),
        reply_chars=sum(len(r) for r in replies) / len(replies) if replies else 0.0,
        distinct_1=distinct_n(replies, 1),
        distinct_2=distinct_n(replies, 2),
        replies=len(replies),
    )
