"""Whether replies make sense: splits, relevance and word-level measures.

- :mod:`engine.quality.splits` — train / validation / test by a stable hash of the
  conversation id; the test split is reported only, never used for a decision.
- :mod:`engine.quality.relevance` — response selection (R@1 of 10) by the model's
  length-normalised likelihood, with a TF-IDF floor.
- :mod:`engine.quality.words` — strict word validity, reply length, distinct-n.
- :mod:`engine.quality.report` — the test-split figures ``parley eval`` prints.

Submodules are imported by name; this package imports nothing, so ``engine.train.data`` can
use the splits without an import cycle.
"""
