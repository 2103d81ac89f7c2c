"""The test-split half of ``parley eval``: held-out loss, and whether replies fit.

Everything here reads only the test split (and, for the TF-IDF floor, the training text):
these figures are reported, never used to choose a checkpoint or to publish one. A test
split too small to measure (no conversation, or fewer than two with a reply) gives ``None``
for what it cannot measure rather than an error: a first, tiny archive can still be
evaluated on the validation side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bot.settings import ReplySettings
from engine.models import LanguageModel
from engine.quality.relevance import (
    TfidfRanker,
    build_examples,
    fused_scores,
    model_scores,
    pmi_scores,
    prior_scores,
    r_at_1,
)
from engine.tokenizer import Tokenizer
from engine.train.data import TextSplits, encode_split
from engine.train.evaluate import evaluate_loss

MAX_CONTEXTS = 200
"""Response-selection contexts drawn from the test split (R@1's standard error ~0.035)."""


@dataclass(frozen=True)
class QualityReport:
    test_loss: float | None
    test_bpc: float | None
    test_tokens: int
    r_at_1: float | None
    """R@1 of 10 by length-normalised log-likelihood (the figure the issue names)."""
    r_at_1_pmi: float | None
    """R@1 of 10 by per-token pointwise mutual information (likelihood minus prior)."""
    r_at_1_tfidf: float | None
    """R@1 of 10 by TF-IDF cosine: the floor."""
    contexts: int
    r_at_1_fused: float | None = None
    """R@1 of 10 by PMI fused with the TF-IDF cosine: the ranking the engine serves
    (``[reply] ranking = "fused"`` at the default ``lexical_weight``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_test(
    model: LanguageModel,
    tokenizer: Tokenizer,
    texts: TextSplits,
    *,
    cache_dir: Path | None = None,
    amp_dtype: torch.dtype | None = None,
    max_contexts: int = MAX_CONTEXTS,
    seed: int = 0,
) -> QualityReport:
    """Loss and response selection on ``texts.test``."""
    if not texts.test:
        return QualityReport(None, None, 0, None, None, None, 0)
    loss = evaluate_loss(model, encode_split(tokenizer, texts.test, cache_dir), amp_dtype=amp_dtype)
    try:
        examples = build_examples(texts.test, max_examples=max_contexts, seed=seed)
    except ValueError:
        return QualityReport(loss.loss, loss.bpc, loss.tokens, None, None, None, 0)
    conditional = model_scores(model, tokenizer, examples)
    prior = prior_scores(model, tokenizer, examples)
    tfidf = TfidfRanker.from_conversations(texts.train).rank_all(examples)
    pmi = pmi_scores(conditional, prior)
    return QualityReport(
        test_loss=loss.loss,
        test_bpc=loss.bpc,
        test_tokens=loss.tokens,
        r_at_1=r_at_1(conditional),
        r_at_1_pmi=r_at_1(pmi),
        r_at_1_tfidf=r_at_1(tfidf),
        contexts=len(examples),
        r_at_1_fused=r_at_1(fused_scores(pmi, tfidf, ReplySettings().lexical_weight)),
    )
