"""Train, validation and test conversations, fixed by a hash of each conversation's id.

- **train**: what the model learns from.
- **validation**: every decision — checkpoint selection, early stopping, the publish gate.
- **test**: reported only (``parley eval``, ``bench/quality.py``); no decision reads it, so
  its figures are not flattered by choices made on them.

A conversation's side is a number in [0, 1) hashed from its id and the split seed
(blake2b, not Python's salted ``hash``), so the split does not depend on load order and
stays put as the archive grows: an old conversation never changes side. The test range
comes first, ``[0, test_fraction)``, then validation, ``[test_fraction, test_fraction +
val_fraction)``. Models trained before the test split existed held out ``[0, 0.05)`` as their
validation split, so with the default ``test_fraction`` of 0.05 their test conversations
are ones they never trained on (they did pick their best checkpoint on them).

On tiny data the hash can leave a side empty; then the conversations with the lowest
hashes are moved there from train (test first, then validation), as long as train keeps
at least one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

Side = Literal["train", "validation", "test"]

DEFAULT_VAL_FRACTION = 0.05
DEFAULT_TEST_FRACTION = 0.05


class HasId(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=HasId)


@dataclass(frozen=True)
class Splits(Generic[T]):
    """The three sides, each in input order."""

    train: list[T]
    validation: list[T]
    test: list[T]


def split_key(conversation_id: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by the id and the seed."""
    digest = hashlib.blake2b(f"{seed}\x00{conversation_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def side_of(key: float, val_fraction: float, test_fraction: float) -> Side:
    """The side a split key falls on."""
    if key < test_fraction:
        return "test"
    if key < test_fraction + val_fraction:
        return "validation"
    return "train"


def split_three(
    items: Sequence[T],
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> Splits[T]:
    """Each item (a conversation) wholly on one side, by :func:`split_key` of its id."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must leave room for training, got "
            f"{val_fraction} + {test_fraction}"
        )
    keys = [split_key(item.id, seed) for item in items]
    sides = [side_of(k, val_fraction, test_fraction) for k in keys]
    wanted: tuple[tuple[Side, float], ...] = (("test", test_fraction), ("validation", val_fraction))
    for side, fraction in wanted:
        _fill_if_empty(sides, keys, side, fraction)
    return Splits(
        train=[it for it, s in zip(items, sides, strict=True) if s == "train"],
        validation=[it for it, s in zip(items, sides, strict=True) if s == "validation"],
        test=[it for it, s in zip(items, sides, strict=True) if s == "test"],
    )


def _fill_if_empty(sides: list[Side], keys: list[float], side: Side, fraction: float) -> None:
    """Move the lowest-keyed training item to ``side`` if it is wanted but empty."""
    if fraction <= 0 or side in sides:
        return
    train = [i for i, s in enumerate(sides) if s == "train"]
    if len(train) < 2:
        return  # train must keep at least one
    sides[min(train, key=lambda i: keys[i])] = side
