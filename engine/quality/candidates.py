"""Reply candidates and the choice between them: "best of" generated and remembered lines.

Three modes:

- ``generate``: one sampled reply (what the engine serves).
- ``retrieve``: the ``k`` past replies whose preceding turn best matches the user's message
  (:class:`ReplyIndex`: SQLite FTS5, BM25), the best of them by the model's score.
- ``hybrid``: ``n`` sampled replies plus those ``k``, the best by the model's score.

The model's score of a candidate is its length-normalised log-likelihood given the
conversation (:func:`engine.quality.relevance.reply_loglik`), or with ``ranking="pmi"`` that
minus its likelihood without the conversation (which stops short generic lines winning
everywhere, see :func:`engine.quality.relevance.pmi_scores`). A candidate that repeats one
of the bot's recent lines loses ``repeat_penalty`` nats per token.

The index holds whatever pairs it is given: callers build it from text that has already had
opted-out users removed (:func:`engine.data.formatting.format_conversations` drops them).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from engine.data.words import words
from engine.models import LanguageModel
from engine.quality.relevance import PRIOR_PROMPT, reply_loglik, turns_of
from engine.tokenizer import Tokenizer

Mode = Literal["generate", "retrieve", "hybrid"]
Ranking = Literal["likelihood", "pmi"]
MODES: tuple[Mode, ...] = ("generate", "retrieve", "hybrid")
SERVED_MODE: Mode = "generate"
"""The mode the engine serves today (the others exist here, for measurement)."""

MAX_QUERY_WORDS = 8
"""Words of the user's message in the full-text query: its rarest in the index."""
_TERM = re.compile(r"[^\W_]+")
"""A query word: a run of letters and digits, as FTS5's default tokenizer splits text."""


class ReplyIndex:
    """Past ``(turn, reply)`` pairs, searchable by the turn's words (FTS5, ranked by BM25)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        # One connection, used from the thread that built the index (the model thread).
        self._db = sqlite3.connect(":memory:")
        self._db.execute(
            "CREATE VIRTUAL TABLE pairs USING fts5("
            "turn, reply UNINDEXED, tokenize = 'unicode61 remove_diacritics 0')"
        )
        self._db.execute("CREATE VIRTUAL TABLE terms USING fts5vocab(pairs, 'row')")
        self._db.executemany("INSERT INTO pairs (turn, reply) VALUES (?, ?)", pairs)
        self.size = int(self._db.execute("SELECT count(*) FROM pairs").fetchone()[0])

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> ReplyIndex:
        """Every consecutive pair of turns of the formatted conversations ``texts``."""
        return cls(
            (turns[i][1], turns[i + 1][1])
            for turns in map(turns_of, texts)
            for i in range(len(turns) - 1)
        )

    def search(self, message: str, k: int) -> list[str]:
        """Up to ``k`` distinct replies to the turns that best match ``message``."""
        terms = self._rarest(list(dict.fromkeys(_TERM.findall(message.lower()))))
        if not terms or k < 1:
            return []
        query = " OR ".join(f'"{t}"' for t in terms)  # _TERM allows no quote: words only
        rows = self._db.execute(
            "SELECT reply FROM pairs WHERE pairs MATCH ? ORDER BY rank LIMIT ?", (query, 4 * k)
        )
        return list(dict.fromkeys(r[0] for r in rows))[:k]

    def _rarest(self, terms: list[str]) -> list[str]:
        """The ``MAX_QUERY_WORDS`` indexed terms of ``terms`` in the fewest turns.

        Words in nearly every turn ("i", "the") barely move BM25's ranking but make the
        query visit most of the index; the rarest words carry the match.
        """
        if not terms:
            return []
        marks = ",".join("?" * len(terms))
        rows = self._db.execute(f"SELECT term, doc FROM terms WHERE term IN ({marks})", terms)
        found = sorted(rows, key=lambda row: (row[1], row[0]))
        return [term for term, _ in found[:MAX_QUERY_WORDS]]

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class Scored:
    """Candidates with the model's scores: per-token log-likelihood given the conversation,
    without it (``prior``, when asked for), and the repeat penalty each one carries."""

    candidates: tuple[str, ...]
    likelihood: tuple[float, ...]
    prior: tuple[float, ...] | None
    penalty: tuple[float, ...]

    def ranked(self, ranking: Ranking) -> list[float]:
        """The score each candidate is ranked by (higher is better)."""
        if ranking == "pmi":
            if self.prior is None:
                raise ValueError("PMI ranking needs the prior: score(..., with_prior=True)")
            base = [c - p for c, p in zip(self.likelihood, self.prior, strict=True)]
        else:
            base = list(self.likelihood)
        return [b - p for b, p in zip(base, self.penalty, strict=True)]

    def best(self, ranking: Ranking, among: Iterable[str] | None = None) -> str:
        """The best candidate, optionally only among ``among`` (which must hold one)."""
        allowed = None if among is None else set(among)
        scores = self.ranked(ranking)
        pool = [i for i, c in enumerate(self.candidates) if allowed is None or c in allowed]
        if not pool:
            raise ValueError("none of those candidates was scored")
        return self.candidates[max(pool, key=lambda i: scores[i])]


def score(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    candidates: Sequence[str],
    *,
    recent_bot_lines: Sequence[str] = (),
    with_prior: bool = False,
    repeat_penalty: float = 1.0,
) -> Scored:
    """Score each distinct non-blank candidate as a reply after ``prompt`` (ending ``<|bot|>``)."""
    unique = tuple(c for c in dict.fromkeys(candidates) if c.strip())
    if not unique:
        raise ValueError("no candidate replies to choose from")
    likelihood = reply_loglik(model, tokenizer, prompt, unique)
    prior = reply_loglik(model, tokenizer, PRIOR_PROMPT, unique) if with_prior else None
    recent = {n for n in map(_normalise, recent_bot_lines) if n}
    penalty = tuple(repeat_penalty * (_normalise(c) in recent) for c in unique)
    return Scored(unique, tuple(likelihood), None if prior is None else tuple(prior), penalty)


@dataclass(frozen=True)
class Choice:
    """The chosen reply, and every candidate with its score (for inspection and tests)."""

    reply: str
    candidates: tuple[str, ...]
    scores: tuple[float, ...]


def choose(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    candidates: Sequence[str],
    *,
    recent_bot_lines: Sequence[str] = (),
    ranking: Ranking = "likelihood",
    repeat_penalty: float = 1.0,
) -> Choice:
    """The best of ``candidates`` as a reply after ``prompt`` (which ends in ``<|bot|>``)."""
    scored = score(
        model, tokenizer, prompt, candidates, recent_bot_lines=recent_bot_lines,
        with_prior=ranking == "pmi", repeat_penalty=repeat_penalty,
    )  # fmt: skip
    return Choice(scored.best(ranking), scored.candidates, tuple(scored.ranked(ranking)))


def _normalise(line: str) -> str:
    return " ".join(words(line))
