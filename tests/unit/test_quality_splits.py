"""Train / validation / test by a stable hash of the conversation id."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from engine.quality.splits import split_key, split_three


@dataclass(frozen=True)
class Conv:
    id: str


def make(n: int, prefix: str = "c") -> list[Conv]:
    return [Conv(f"{prefix}{i}") for i in range(n)]


def ids(items: list[Conv]) -> set[str]:
    return {c.id for c in items}


def test_every_conversation_lands_on_exactly_one_side_by_its_hash() -> None:
    convs = make(2000)
    sides = split_three(convs, val_fraction=0.1, test_fraction=0.05)
    assert ids(sides.train) | ids(sides.validation) | ids(sides.test) == ids(convs)
    assert len(sides.train) + len(sides.validation) + len(sides.test) == len(convs)
    assert all(split_key(c.id) < 0.05 for c in sides.test)
    assert all(0.05 <= split_key(c.id) < 0.15 for c in sides.validation)
    assert 60 < len(sides.test) < 140 and 140 < len(sides.validation) < 260


def test_the_split_ignores_order_and_keeps_old_conversations_where_they_were() -> None:
    convs = make(500)
    shuffled = convs[:]
    random.Random(1).shuffle(shuffled)
    first, again = split_three(convs), split_three(shuffled)
    assert ids(first.test) == ids(again.test) and ids(first.validation) == ids(again.validation)
    grown = split_three(convs + make(500, prefix="new"))
    assert ids(first.test) <= ids(grown.test)
    assert ids(first.validation) <= ids(grown.validation)
    assert ids(first.train) <= ids(grown.train)


def test_test_comes_first_so_the_old_two_way_validation_side_is_the_test_side() -> None:
    # Before three splits, [0, 0.05) was held out as validation; models trained then never
    # saw today's test conversations.
    convs = make(1000)
    assert ids(split_three(convs).test) == {c.id for c in convs if split_key(c.id) < 0.05}


def test_the_seed_changes_the_split() -> None:
    convs = make(400)
    assert ids(split_three(convs, seed=1).test) != ids(split_three(convs, seed=2).test)


def test_tiny_data_still_gets_a_test_and_a_validation_conversation() -> None:
    sides = split_three(make(3), val_fraction=0.01, test_fraction=0.01)
    assert (len(sides.train), len(sides.validation), len(sides.test)) == (1, 1, 1)
    two = split_three(make(2), val_fraction=0.01, test_fraction=0.01)
    assert len(two.train) == 1  # training keeps at least one
    assert split_three(make(50), test_fraction=0.0).test == []


@pytest.mark.parametrize(("val", "test"), [(1.0, 0.0), (-0.1, 0.0), (0.5, 0.5), (0.0, 1.2)])
def test_bad_fractions_are_refused(val: float, test: float) -> None:
    with pytest.raises(ValueError):
        split_three(make(10), val_fraction=val, test_fraction=test)
