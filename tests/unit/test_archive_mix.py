"""How a retrain mixes the archive with the corpora: a small archive is repeated up to its
share of the training text, never beyond the cap, and not at all with a share of 0."""

from __future__ import annotations

from engine.train.retrain import MAX_REPEATS, mix


def test_a_small_archive_is_repeated_up_to_its_share() -> None:
    train, repeats = mix(["a" * 100], ["b" * 300], 0.5)
    assert repeats == 3
    assert train == ["a" * 100] * 3 + ["b" * 300]


def test_repeats_are_capped() -> None:
    _, repeats = mix(["a"], ["b" * 10_000], 0.5)
    assert repeats == MAX_REPEATS


def test_a_large_archive_or_a_zero_share_goes_in_once() -> None:
    assert mix(["a" * 500], ["b" * 100], 0.5)[1] == 1
    assert mix(["a" * 10], ["b" * 1000], 0.0)[1] == 1
    assert mix([], ["b"], 0.5) == (["b"], 1)
