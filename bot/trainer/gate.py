"""The gate: whether a retrained model replaces the live one.

Both models are scored (bits per character, each through its own tokenizer) on the same
fixed held-out conversations, in two parts: the archive's, which is what the community says,
and the corpora's, which is what the model knew before. The new model is published when it
is better on the archive's part by more than ``min_improvement`` and worse on the corpora's
part by at most ``max_corpora_rise`` (learning a community's way of talking costs a little
generic chitchat; forgetting it is what the bound stops). With no archive, the corpora's part
must improve instead. Pure arithmetic, so it is tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scores:
    """Held-out bits/char; ``None`` for a part with no held-out conversations."""

    archive: float | None
    corpora: float | None


@dataclass(frozen=True)
class Verdict:
    publish: bool
    message: str
    new_bpc: float
    """The score that decided (the archive's, else the corpora's)."""
    live_bpc: float | None


def _change(new: float, old: float) -> float:
    return (new - old) / old


def decide(
    new: Scores,
    live: Scores | None,
    *,
    min_improvement: float,
    max_corpora_rise: float,
    live_name: str = "the live model",
) -> Verdict:
    decisive = "archive" if new.archive is not None else "corpora"
    new_score = new.archive if new.archive is not None else new.corpora
    if new_score is None:
        raise ValueError("no held-out conversations to score")
    live_score = None if live is None else getattr(live, decisive)
    if live is None or live_score is None:
        return Verdict(True, f"new model: {new_score:.3f} bits/char held out (nothing to compare)",
                       new_score, None)  # fmt: skip
    label = "the community's" if decisive == "archive" else "the corpora's"
    change = _change(new_score, live_score)
    better = new_score < live_score * (1.0 - min_improvement)
    parts = [
        f"on {label} held-out conversations {new_score:.3f} bits/char vs {live_name}'s "
        f"{live_score:.3f} ({change:+.1%}"
        + ("" if better else f", needed below {-min_improvement:+.1%}")
        + ")"
    ]
    kept_knowledge = True
    if decisive == "archive" and new.corpora is not None and live.corpora is not None:
        rise = _change(new.corpora, live.corpora)
        kept_knowledge = rise <= max_corpora_rise
        parts.append(
            f"on the corpora's {new.corpora:.3f} vs {live.corpora:.3f} ({rise:+.1%}, "
            f"allowed up to {max_corpora_rise:+.1%})"
        )
    publish = better and kept_knowledge
    message = "; ".join(parts)
    if not publish:
        message += f"; {live_name} stays live"
    return Verdict(publish, message, new_score, live_score)
