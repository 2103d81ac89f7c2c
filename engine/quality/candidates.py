"""Reply candidates and the choice between them: "best of" generated and remembered lines.

Three modes (the engine serves them, :mod:`engine.serve.replies`; ``bench/quality.py``
measures them):

- ``generate``: one sampled reply.
- ``retrieve``: the ``k`` past replies whose preceding turn best matches the user's message
  (:class:`ReplyIndex`: SQLite FTS5, BM25), the best of them by the model's score.
- ``hybrid``: ``n`` sampled replies plus those ``k``, the best by the model's score.

The model's score of a candidate is its length-normalised log-likelihood given the
conversation (:func:`engine.quality.relevance.reply_loglik`), or with ``ranking="pmi"`` that
minus its likelihood without the conversation (which stops short generic lines winning
everywhere, see :func:`engine.quality.relevance.pmi_scores`), or with ``ranking="fused"``
PMI plus ``lexical_weight`` x the TF-IDF cosine of the conversation's turns and the candidate
(:class:`~engine.quality.relevance.TfidfRanker`, fitted on the training split). A candidate
that repeats one of the bot's recent lines loses ``repeat_penalty`` nats per token.

The index holds whatever pairs it is given, each with its reply's author: callers build it
from text that had opted-out users removed (the checkpoint's remembered replies,
:mod:`engine.data.remembered`), and :meth:`ReplyIndex.search` leaves out whatever its
``allow`` refuses (users who opted out since, lines the safety filter blocks).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.data.remembered import ReplyPair, read_reply_pairs
from engine.data.words import words
from engine.models import LanguageModel
from engine.quality.relevance import (
    PRIOR_PROMPT,
    TfidfRanker,
    fused,
    pmi,
    reply_loglik,
    turns_of,
)
from engine.tokenizer import Tokenizer

Mode = Literal["generate", "retrieve", "hybrid"]
Ranking = Literal["likelihood", "pmi", "fused"]
MODES: tuple[Mode, ...] = ("generate", "retrieve", "hybrid")

SEARCH_ROWS_PER_REPLY = 4
"""Matches read per reply wanted: room for repeats and for what ``allow`` refuses."""
MAX_QUERY_WORDS = 8
COMMON_TERM_SHARE = 0.02
"""A query word in more turns than this share of the index is left out (see ``_rarest``),"""
COMMON_TERM_MIN_TURNS = 500
"""...and in more than this many turns (a small index is fast to rank whatever the query)."""
"""Words of the user's message in the full-text query: its rarest in the index."""
_TERM = re.compile(r"[^\W_]+")
"""A query word: a run of letters and digits, as FTS5's default tokenizer splits text."""


class ReplyIndex:
    """Past ``(turn, reply)`` pairs, searchable by the turn's words (FTS5, ranked by BM25)."""

    def __init__(self, pairs: Iterable[ReplyPair]) -> None:
        # One connection, used by one thread at a time: the engine builds an index in a
        # loader thread, then only its torch thread searches it.
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(
            "CREATE VIRTUAL TABLE pairs USING fts5("
            "turn, reply UNINDEXED, author UNINDEXED, tokenize = 'unicode61 remove_diacritics 0')"
        )
        self._db.execute("CREATE VIRTUAL TABLE terms USING fts5vocab(pairs, 'row')")
        self._db.executemany(
            "INSERT INTO pairs (turn, reply, author) VALUES (?, ?, ?)",
            ((p.turn, p.reply, p.author) for p in pairs),
        )
        self.size = int(self._db.execute("SELECT count(*) FROM pairs").fetchone()[0])
        # How many turns hold each term, read once: fts5vocab scans its whole table per query.
        self._docs: dict[str, int] = dict(self._db.execute("SELECT term, doc FROM terms"))

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> ReplyIndex:
        """Every consecutive pair of turns of the formatted conversations ``texts`` (their
        authors unknown: ``""``)."""
        return cls(
            ReplyPair(turns[i][1], turns[i + 1][1], "")
            for turns in map(turns_of, texts)
            for i in range(len(turns) - 1)
        )

    @classmethod
    def from_file(cls, path: Path) -> ReplyIndex:
        """The remembered replies a checkpoint carries (:mod:`engine.data.remembered`)."""
        return cls(read_reply_pairs(path))

    def search(
        self, message: str, k: int, allow: Callable[[ReplyPair], bool] | None = None
    ) -> list[str]:
        """Up to ``k`` distinct replies to the turns that best match ``message``, only those
        ``allow`` accepts (consent, the safety filter) when given."""
        terms = self._rarest(list(dict.fromkeys(_TERM.findall(message.lower()))))
        if not terms or k < 1:
            return []
        query = " OR ".join(f'"{t}"' for t in terms)  # _TERM allows no quote: words only
        rows = self._db.execute(
            "SELECT turn, reply, author FROM pairs WHERE pairs MATCH ? ORDER BY rank LIMIT ?",
            (query, SEARCH_ROWS_PER_REPLY * k),
        )
        pairs = (ReplyPair(*row) for row in rows)
        kept = (p.reply for p in pairs if allow is None or allow(p))
        return list(dict.fromkeys(kept))[:k]

    def _rarest(self, terms: list[str]) -> list[str]:
        """The ``MAX_QUERY_WORDS`` indexed terms of ``terms`` in the fewest turns, leaving
        out common ones (in more than :data:`COMMON_TERM_SHARE` of the turns and more than
        :data:`COMMON_TERM_MIN_TURNS`) unless nothing else is left (then the rarest one).

        Words in nearly every turn ("i", "you") barely move BM25's ranking but make the
        query rank most of the index (a fifth of a second on 100k pairs); the rarest words
        carry the match.
        """
        if not terms:
            return []
        found = sorted(((t, self._docs[t]) for t in terms if t in self._docs), key=_by_count)
        common = max(COMMON_TERM_SHARE * self.size, COMMON_TERM_MIN_TURNS)
        kept = [term for term, doc in found if doc <= common] or [t for t, _ in found[:1]]
        return kept[:MAX_QUERY_WORDS]

    def close(self) -> None:
        self._db.close()


def _by_count(term_count: tuple[str, int]) -> tuple[int, str]:
    return term_count[1], term_count[0]


@dataclass(frozen=True)
class Scored:
    """Candidates with the model's scores: per-token log-likelihood given the conversation,
    without it (``prior``, when asked for), the TF-IDF cosine of each with the conversation
    (``lexical``, when asked for), and the repeat penalty each one carries."""

    candidates: tuple[str, ...]
    likelihood: tuple[float, ...]
    prior: tuple[float, ...] | None
    penalty: tuple[float, ...]
    lexical: tuple[float, ...] | None = None

    def ranked(self, ranking: Ranking, lexical_weight: float = 0.0) -> list[float]:
        """The score each candidate is ranked by (higher is better)."""
        if ranking == "likelihood":
            base = list(self.likelihood)
        elif self.prior is None:
            raise ValueError("PMI ranking needs the prior: score(..., with_prior=True)")
        else:
            base = pmi(self.likelihood, self.prior)
        if ranking == "fused":
            if self.lexical is None:
                raise ValueError("fused ranking needs the TF-IDF scores: score(..., lexical=)")
            base = fused(base, self.lexical, lexical_weight)
        return [b - p for b, p in zip(base, self.penalty, strict=True)]


def score(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    candidates: Sequence[str],
    *,
    recent_bot_lines: Sequence[str] = (),
    with_prior: bool = False,
    lexical: TfidfRanker | None = None,
    repeat_penalty: float = 1.0,
    prior_cache: MutableMapping[str, float] | None = None,
) -> Scored:
    """Score each distinct non-blank candidate as a reply after ``prompt`` (ending ``<|bot|>``).

    A candidate's prior does not depend on the conversation: with ``prior_cache`` (kept per
    model by the caller) each is computed once. With ``lexical``, each candidate's TF-IDF
    cosine with the prompt's turns is computed too.
    """
    unique = tuple(c for c in dict.fromkeys(candidates) if c.strip())
    if not unique:
        raise ValueError("no candidate replies to choose from")
    likelihood = reply_loglik(model, tokenizer, prompt, unique)
    prior = _priors(model, tokenizer, unique, prior_cache) if with_prior else None
    recent = {n for n in map(_normalise, recent_bot_lines) if n}
    penalty = tuple(repeat_penalty * (_normalise(c) in recent) for c in unique)
    shared = None if lexical is None else tuple(lexical.scores(turns_of(prompt), unique))
    return Scored(
        unique, tuple(likelihood), None if prior is None else tuple(prior), penalty, shared
    )


def _priors(
    model: LanguageModel,
    tokenizer: Tokenizer,
    candidates: Sequence[str],
    cache: MutableMapping[str, float] | None,
) -> list[float]:
    if cache is None:
        return reply_loglik(model, tokenizer, PRIOR_PROMPT, candidates)
    missing = [c for c in candidates if c not in cache]
    if missing:
        cache.update(
            zip(missing, reply_loglik(model, tokenizer, PRIOR_PROMPT, missing), strict=True)
        )
    return [cache[c] for c in candidates]


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
    lexical: TfidfRanker | None = None,
    lexical_weight: float = 0.0,
    repeat_penalty: float = 1.0,
    prior_cache: MutableMapping[str, float] | None = None,
) -> Choice:
    """The best of ``candidates`` as a reply after ``prompt`` (which ends in ``<|bot|>``);
    ``fused`` ranking needs ``lexical``."""
    scored = score(
        model, tokenizer, prompt, candidates, recent_bot_lines=recent_bot_lines,
        with_prior=ranking != "likelihood", lexical=lexical if ranking == "fused" else None,
        repeat_penalty=repeat_penalty, prior_cache=prior_cache,
    )  # fmt: skip
    ranked = scored.ranked(ranking, lexical_weight)
    best = max(range(len(ranked)), key=ranked.__getitem__)
    return Choice(scored.candidates[best], scored.candidates, tuple(ranked))


def _normalise(line: str) -> str:
    return " ".join(words(line))
