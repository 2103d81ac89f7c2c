"""Does a reply fit its conversation? Response selection, R@1 out of 10.

The standard measure of the Ubuntu Dialogue Corpus papers (Lowe et al., 2015): for each
context, the true next reply is ranked against 9 distractors, replies drawn at random from
*other* test conversations; R@1 is the share of contexts where the true one ranks first. A
random ranker scores 0.10. The model ranks by the length-normalised log-likelihood of each
candidate given the context (:func:`reply_loglik`: mean log-probability per token of the
candidate and its ``<|eot|>``). A TF-IDF ranker (cosine between the context and each
candidate, the vectorizer fitted on the training text) is reported beside it as the floor,
and so is the model ranking by pointwise mutual information (:func:`pmi_scores`), which
shows how much of the context the model uses when generic replies are discounted, and by PMI
fused with the TF-IDF cosine (:func:`fused_scores`), the ranking the engine serves by default.

A context ends in a user turn and the reply is the ``<|bot|>`` turn after it, the layout the
engine serves (:func:`engine.data.formatting.format_prompt`). Ties count as misses, so a
model that scores every candidate alike gets 0, not 1.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import TfidfVectorizer

from engine.data.formatting import BOT_TOKEN, EOT_TOKEN, USER_TOKEN, Role, format_turns
from engine.models import LanguageModel
from engine.tokenizer import Tokenizer

N_CANDIDATES = 10
MAX_CONTEXT_TOKENS = 192
"""Context tokens kept before a candidate (the most recent ones)."""
MAX_REPLY_TOKENS = 64
"""Tokens of a candidate scored; a longer one is scored on its first 64 (no ``<|eot|>``)."""

_TURN = re.compile(
    f"({re.escape(USER_TOKEN)}|{re.escape(BOT_TOKEN)})(.*?){re.escape(EOT_TOKEN)}", re.S
)
_ROLE_OF: dict[str, Role] = {USER_TOKEN: "user", BOT_TOKEN: "bot"}

PRIOR_PROMPT = USER_TOKEN
"""The prompt a candidate is scored after for its context-free likelihood."""

Turn = tuple[Role, str]


def turns_of(text: str) -> list[Turn]:
    """The ``(role, text)`` turns of a formatted conversation (the inverse of ``format_turns``)."""
    return [(_ROLE_OF[m.group(1)], m.group(2)) for m in _TURN.finditer(text)]


@dataclass(frozen=True)
class SelectionExample:
    """One context and its candidates; ``candidates[0]`` is the true reply."""

    context: tuple[Turn, ...]
    candidates: tuple[str, ...]

    @property
    def reply(self) -> str:
        return self.candidates[0]

    def prompt(self) -> str:
        """The context as the engine's prompt: the turns, then ``<|bot|>``."""
        return format_turns(self.context) + BOT_TOKEN


def build_examples(
    texts: Sequence[str],
    *,
    n_candidates: int = N_CANDIDATES,
    max_examples: int | None = None,
    seed: int = 0,
) -> list[SelectionExample]:
    """Selection examples from formatted test conversations, drawn with ``seed``.

    Every bot turn (odd position: it answers a user turn) of every conversation is a
    possible example; ``max_examples`` of them are drawn at random (all if ``None``), in
    conversation order. Distractors are turns of other conversations, never a text equal
    to the true reply (two distractors may share a text). ``ValueError`` when the texts
    hold fewer than two conversations with a reply.
    """
    if n_candidates < 2:
        raise ValueError(f"n_candidates must be at least 2, got {n_candidates}")
    rng = random.Random(seed)
    conversations = [turns_of(t) for t in texts]
    positions = [(c, i) for c, turns in enumerate(conversations) for i in range(1, len(turns), 2)]
    if max_examples is not None and len(positions) > max_examples:
        positions = sorted(rng.sample(positions, max_examples))
    pool = [(c, text) for c, turns in enumerate(conversations) for _, text in turns]
    if not positions or len({c for c, _ in pool}) < 2:
        raise ValueError("response selection needs at least two conversations with a reply")
    examples = []
    for c, i in positions:
        turns = conversations[c]
        true = turns[i][1]
        distractors = _draw_distractors(rng, pool, c, true, n_candidates - 1)
        examples.append(SelectionExample(tuple(turns[:i]), (true, *distractors)))
    return examples


def _draw_distractors(
    rng: random.Random, pool: list[tuple[int, str]], own: int, true: str, n: int
) -> list[str]:
    chosen: list[str] = []
    for _ in range(100 * n):
        c, text = pool[rng.randrange(len(pool))]
        if c != own and text != true:
            chosen.append(text)
            if len(chosen) == n:
                return chosen
    raise ValueError("other conversations hold no reply that differs from the true one")


def r_at_1(scores: Sequence[Sequence[float]]) -> float:
    """Share of rows whose first score (the true reply's) beats every other strictly."""
    if not scores:
        raise ValueError("no examples to score")
    return sum(row[0] > max(row[1:]) for row in scores) / len(scores)


# ------------------------------------------------------------------------ the model's ranker


@torch.no_grad()
def reply_loglik(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    candidates: Sequence[str],
    *,
    max_context_tokens: int = MAX_CONTEXT_TOKENS,
    max_reply_tokens: int = MAX_REPLY_TOKENS,
) -> list[float]:
    """Mean log-probability per token of each candidate reply after ``prompt``.

    ``prompt`` ends in ``<|bot|>`` (:meth:`SelectionExample.prompt`, or the engine's
    prompt); each candidate is scored with its ``<|eot|>`` (the model should also know
    the reply is complete there). The context keeps its latest ``max_context_tokens``,
    fewer where context and the longest candidate would not fit in the model's context (a
    GPT's block size). The context goes through the model once; the candidates then
    continue its state as one batch.
    """
    context = tokenizer.encode(prompt)
    if not context:
        raise ValueError("the prompt is empty")
    if not candidates:
        return []
    limit = model.max_context  # GPT: its block size; GRU: unbounded
    reply_cap = max_reply_tokens if limit is None else min(max_reply_tokens, limit - 1)
    replies = [_reply_ids(tokenizer, c, reply_cap) for c in candidates]
    width = max(len(r) for r in replies)
    keep = min(len(context), max_context_tokens, *(() if limit is None else (limit - width,)))
    device = model.device
    was_training = model.training
    model.eval()
    try:
        head = torch.tensor([context[len(context) - keep :]], device=device)  # (1, C)
        first, state = model(head, last_only=True)  # (1, 1, V): predicts each reply's start
        tokens = torch.full((len(replies), width), tokenizer.pad_id, dtype=torch.long)  # (B, R)
        for b, reply in enumerate(replies):
            tokens[b, : len(reply)] = torch.tensor(reply)
        rest, _ = model(tokens.to(device), model.repeat_state(state, len(replies)))  # (B, R, V)
    finally:
        model.train(was_training)
    # Position i of a row predicts its token i + 1; the context's last position its token 0.
    logits = torch.cat([first.expand(len(replies), -1, -1), rest[:, :-1]], dim=1)  # (B, R, V)
    logprobs = F.log_softmax(logits.float(), dim=-1)  # (B, R, V)
    picked = logprobs.gather(2, tokens.to(device)[:, :, None])[:, :, 0]  # (B, R)
    return [float(picked[b, : len(r)].mean()) for b, r in enumerate(replies)]


def _reply_ids(tokenizer: Tokenizer, text: str, max_tokens: int) -> list[int]:
    ids = tokenizer.encode(text)
    return ids[:max_tokens] if len(ids) >= max_tokens else [*ids, tokenizer.eot_id]


def model_scores(
    model: LanguageModel, tokenizer: Tokenizer, examples: Sequence[SelectionExample]
) -> list[list[float]]:
    """:func:`reply_loglik` of every example's candidates, row by row."""
    return [reply_loglik(model, tokenizer, ex.prompt(), ex.candidates) for ex in examples]


def prior_scores(
    model: LanguageModel, tokenizer: Tokenizer, examples: Sequence[SelectionExample]
) -> list[list[float]]:
    """Each candidate's :func:`reply_loglik` without the context: as a conversation's
    opening turn (:data:`PRIOR_PROMPT`), the closest layout training has to "no context"."""
    return [reply_loglik(model, tokenizer, PRIOR_PROMPT, ex.candidates) for ex in examples]


def pmi(conditional: Sequence[float], prior: Sequence[float]) -> list[float]:
    """Per-token pointwise mutual information of one context's candidates: how much the
    context raised each one's likelihood. Raw likelihood favours short, generic replies
    ("yes", "lol") in any context; subtracting the context-free likelihood cancels that."""
    return [c - p for c, p in zip(conditional, prior, strict=True)]


def fused(pmi_row: Sequence[float], lexical: Sequence[float], weight: float) -> list[float]:
    """PMI plus ``weight`` x the TF-IDF cosine of context and candidate: the model's view of
    fit and the words the two share, which rank true replies better together than either
    alone (``[reply] ranking = "fused"``, :mod:`engine.quality.candidates`)."""
    return [p + weight * t for p, t in zip(pmi_row, lexical, strict=True)]


def pmi_scores(
    conditional: Sequence[Sequence[float]], prior: Sequence[Sequence[float]]
) -> list[list[float]]:
    """:func:`pmi` of every example, row by row."""
    return [pmi(c, p) for c, p in zip(conditional, prior, strict=True)]


def fused_scores(
    pmi_rows: Sequence[Sequence[float]], lexical: Sequence[Sequence[float]], weight: float
) -> list[list[float]]:
    """:func:`fused` of every example, row by row."""
    return [fused(p, t, weight) for p, t in zip(pmi_rows, lexical, strict=True)]


# ------------------------------------------------------------------------- the TF-IDF floor


class TfidfRanker:
    """Cosine similarity of TF-IDF vectors (word unigrams and bigrams, sublinear tf)."""

    def __init__(self, turns: Iterable[str]) -> None:
        """Fitted on ``turns``, the training split's turn texts (each once): on the terms in
        two or more of them, or in any where no term repeats (a tiny archive).
        ``ValueError`` when they hold no word at all."""
        texts = list(turns)
        if not texts:
            raise ValueError("the TF-IDF ranker needs training text")
        for min_df in (2, 1):
            self._vectorizer = TfidfVectorizer(
                ngram_range=(1, 2), sublinear_tf=True, min_df=min_df, dtype=np.float32
            )
            try:
                self._vectorizer.fit(texts)
                return
            except ValueError:  # no term kept ("empty vocabulary")
                continue
        raise ValueError("the TF-IDF ranker's training text holds no words")

    @classmethod
    def from_conversations(cls, training_texts: Sequence[str]) -> TfidfRanker:
        """Fitted on every turn of the formatted training conversations."""
        return cls(text for t in training_texts for _, text in turns_of(t))

    def scores(self, context: Sequence[Turn], candidates: Sequence[str]) -> list[float]:
        matrix = self._vectorizer.transform([" ".join(t for _, t in context), *candidates])
        similarity = (matrix[1:] @ matrix[0].T).toarray()[:, 0]  # rows are l2-normalised
        return [float(s) for s in np.asarray(similarity)]

    def rank_all(self, examples: Sequence[SelectionExample]) -> list[list[float]]:
        return [self.scores(ex.context, ex.candidates) for ex in examples]
