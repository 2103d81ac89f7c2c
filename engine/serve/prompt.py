"""A request's prompt, in exactly the layout the model was trained on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.wire import Turn
from engine.data.formatting import USER_TOKEN, format_prompt


@dataclass(frozen=True)
class Prompt:
    full: str
    """The whole conversation so far plus the new message, ending in ``<|bot|>``."""
    history: str
    """``full`` up to the new message: what a cached state must already have consumed."""
    truncated: str
    """``full`` with the oldest turns dropped to fit ``max_chars`` (for a recompute)."""


def build_prompt(history: Sequence[Turn], text: str, max_chars: int) -> Prompt:
    """Format ``history`` + ``text``; raises ``ValueError`` if ``text`` is empty once cleaned."""
    pairs = [(turn.role, turn.text) for turn in history]
    full = format_prompt(pairs, text)
    truncated = full
    start = 0
    while len(truncated) > max_chars and start < len(pairs):
        start += 1  # drop the oldest turn; the new message always stays
        truncated = format_prompt(pairs[start:], text)
    return Prompt(full=full, history=full[: full.rfind(USER_TOKEN)], truncated=truncated)
