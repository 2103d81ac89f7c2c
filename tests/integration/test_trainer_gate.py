"""The retrain gate: better on the community's held-out conversations, and not much worse on
the corpora's (pure arithmetic; the end-to-end runs are in test_learning.py)."""

from __future__ import annotations

import pytest

from bot.trainer.gate import Scores, decide


def gate(new: Scores, live: Scores | None, **kw: float):  # type: ignore[no-untyped-def]
    return decide(
        new,
        live,
        min_improvement=kw.get("min_improvement", 0.0),
        max_corpora_rise=kw.get("max_corpora_rise", 0.05),
        live_name="v0001",
    )


def test_better_on_the_archive_within_the_corpora_bound_is_published() -> None:
    verdict = gate(Scores(1.8, 1.54), Scores(2.4, 1.52))
    assert verdict.publish
    assert (verdict.new_bpc, verdict.live_bpc) == (1.8, 2.4)
    assert "community's held-out conversations 1.800 bits/char vs v0001's 2.400 (-25.0%)" in (
        verdict.message
    )
    assert "stays live" not in verdict.message


def test_forgetting_the_corpora_beyond_the_bound_is_not_published() -> None:
    verdict = gate(Scores(1.8, 1.70), Scores(2.4, 1.52))
    assert not verdict.publish
    assert "(+11.8%, allowed up to +5.0%)" in verdict.message
    assert verdict.message.endswith("v0001 stays live")


def test_not_better_on_the_archive_is_not_published() -> None:
    verdict = gate(Scores(2.39, 1.50), Scores(2.4, 1.52), min_improvement=0.01)
    assert not verdict.publish and "needed below -1.0%" in verdict.message


def test_without_an_archive_the_corpora_must_improve() -> None:
    assert gate(Scores(None, 1.50), Scores(None, 1.52)).publish
    assert not gate(Scores(None, 1.53), Scores(None, 1.52)).publish


def test_the_first_model_is_published() -> None:
    assert gate(Scores(2.0, None), None).publish
    with pytest.raises(ValueError):
        gate(Scores(None, None), None)
