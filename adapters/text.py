"""Reply text for chat platforms: split at a length limit without breaking words or code.

A platform caps one message (Discord 2,000 characters, Telegram 4,096); a longer reply continues
in further messages. :func:`split_message` cuts at the last line break before the limit, else
the last space, else (one unbroken word) at the limit itself. A cut never leaves a fenced code
block open: when a block is too long for one message it is closed at the cut and reopened, with
its language tag, at the top of the next, so every message renders on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable

FENCE = "```"
_FENCE_LINE = re.compile(r"^```[^\n`]{0,20}$", re.MULTILINE)
_CLOSE = "\n" + FENCE

Measure = Callable[[str], int]


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts a message."""
    return len(text.encode("utf-16-le")) // 2


def split_message(text: str, limit: int, *, measure: Measure = len) -> list[str]:
    """``text`` as messages no longer than ``limit`` (by ``measure``), in order.

    Whitespace at a cut is dropped; an empty or whitespace-only text gives no messages.
    """
    if limit < 4 * len(_CLOSE):
        raise ValueError(f"limit {limit} is too small to split code blocks")
    chunks: list[str] = []
    rest = text.strip()
    while rest:
        if measure(rest) <= limit:
            chunks.append(rest)
            break
        head, rest = _take(rest, limit, measure)
        chunks.append(head)
    return chunks


def _take(text: str, limit: int, measure: Measure) -> tuple[str, str]:
    """The first message cut from ``text`` and what remains (already reopened if needed)."""
    budget = limit - len(_CLOSE)  # room to close a code block the cut falls inside
    cut = _cut_index(text, _fit(text, budget, measure))
    head = text[:cut].rstrip()
    rest = text[cut:].lstrip(" \n")
    fence = _open_fence(head)
    if fence is None:
        return head, rest
    start = head.rfind(fence)
    if start > budget // 4:  # the block starts late: move it whole to the next message
        return head[:start].rstrip(), text[start:]
    # Inside code, indentation matters: drop only the line break the cut fell on.
    code = text[cut:]
    code = code[1:] if code.startswith("\n") else code.lstrip(" ")
    return head + _CLOSE, fence + "\n" + code


def _fit(text: str, budget: int, measure: Measure) -> int:
    """The longest prefix length of ``text`` whose measure is at most ``budget``."""
    if measure is len:
        return min(len(text), budget)
    lo, hi = 0, min(len(text), budget)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut_index(text: str, hard: int) -> int:
    """Where to cut within ``text[:hard]``: a line break, else a space, else ``hard``."""
    window = text[: hard + 1]  # a break right after the limit still counts
    for sep in ("\n", " "):
        at = window.rfind(sep, 0, hard + 1)
        if at > hard // 2:
            return at
    return max(1, hard)


def _open_fence(text: str) -> str | None:
    """The opening fence line of a code block ``text`` leaves open, else ``None``."""
    fences = _FENCE_LINE.findall(text)
    return fences[-1] if len(fences) % 2 else None
