"""The output safety filter: what the bot must never say, applied before anything is shown.

An admin configures ``[safety]``: a blocklist of words (matched whole-word, case-insensitively,
Unicode-normalised so look-alike widths and accents do not slip through), regular-expression
patterns, and optionally a classifier hook (``"package.module:function"``, called with the
reply's text, returning true to block). What happens to a reply that matches is ``action``:

- ``mask``: each match is replaced by asterisks of its length;
- ``replace``: the whole reply becomes ``replacement``;
- ``regenerate``: the engine is asked for a new reply to the same message
  (:func:`regeneration`: a derived request id, another seed, ``ChatRequest.regenerates``), up
  to ``regenerate_attempts`` times; the first that passes is the reply, and only if every one
  is blocked too does the reply become ``replacement`` (and the stored reply is amended to
  read it). The engine replaces the blocked exchange in the stored history (and the archive
  replaces the blocked reply), and the new prompt does not contain it.

A classifier's verdict is never ``mask`` (it judges whole replies, not spans).

:class:`SafetyFilter` judges whole texts. :class:`StreamGuard` sits on a streaming reply: it
releases only the part of the text that can no longer become a match (it holds back the
unfinished last word and as many characters as the longest blocked phrase), masked, so a
blocked word never appears even briefly — not in a half-written edit either.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from bot.errors import ConfigError
from bot.settings import SafetySettings
from bot.wire import ChatRequest

log = logging.getLogger(__name__)

Action = Literal["mask", "replace", "regenerate"]
Classifier = Callable[[str], bool]

MASK_CHAR = "*"
PATTERN_HOLDBACK_CHARS = 64
"""How far back a regular-expression pattern may reach; streamed text this close to the end is
held until more arrives (a blocklist word needs only its own length)."""


@dataclass(frozen=True)
class Verdict:
    """What the filter found in a text and what to show instead."""

    blocked: bool
    text: str
    """The text to show: masked for ``mask``; the original when nothing matched."""
    reasons: tuple[str, ...] = ()


def _fold(text: str) -> str:
    """Compatibility-normalise and case-fold, keeping one character per character so match
    positions map back onto the original text."""
    out = []
    for ch in text:
        folded = unicodedata.normalize("NFKD", ch)
        base = "".join(c for c in folded if not unicodedata.combining(c)).casefold()
        out.append(base[:1] if len(base) >= 1 else ch)
    return "".join(out)


def load_classifier(spec: str) -> Classifier:
    """Import ``"package.module:function"``; a :class:`ConfigError` names what is wrong."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"safety.classifier {spec!r}: expected 'package.module:function'")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"safety.classifier {spec!r} cannot be loaded: {e}") from e
    if not callable(function):
        raise ConfigError(f"safety.classifier {spec!r} is not callable")
    classifier: Classifier = function
    return classifier


class SafetyFilter:
    """Finds blocked words and patterns in a text; immutable once built."""

    def __init__(
        self,
        *,
        blocklist: Sequence[str] = (),
        patterns: Sequence[str] = (),
        action: Action = "mask",
        replacement: str = "I'd rather not say that.",
        classifier: Classifier | None = None,
        regenerate_attempts: int = 2,
    ) -> None:
        words = sorted({_fold(w.strip()) for w in blocklist if w.strip()}, key=len, reverse=True)
        parts = [rf"(?<!\w){re.escape(w)}(?!\w)" for w in words]
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"safety.patterns: {pattern!r} is not a valid regex: {e}") from e
            parts.append(f"(?:{pattern})")
        self._regex = re.compile("|".join(parts), re.IGNORECASE) if parts else None
        self.action: Action = action
        self.replacement = replacement
        self.classifier = classifier
        self.regenerate_attempts = regenerate_attempts
        self.holdback_chars = max((len(w) for w in words), default=0) + (
            PATTERN_HOLDBACK_CHARS if patterns else 0
        )

    @classmethod
    def from_settings(cls, settings: SafetySettings) -> SafetyFilter:
        """The filter the ``[safety]`` settings describe (a bad pattern or hook: ConfigError)."""
        return cls(
            blocklist=settings.blocklist,
            patterns=settings.patterns,
            action=settings.action,
            replacement=settings.replacement,
            classifier=load_classifier(settings.classifier) if settings.classifier else None,
            regenerate_attempts=settings.regenerate_attempts,
        )

    @property
    def active(self) -> bool:
        return self._regex is not None or self.classifier is not None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where blocked words and patterns occur in ``text``."""
        if self._regex is None:
            return []
        return [m.span() for m in self._regex.finditer(_fold(text)) if m.end() > m.start()]

    def mask(self, text: str) -> str:
        """``text`` with every match replaced by asterisks of the same length."""
        chars = list(text)
        for start, end in self.spans(text):
            chars[start:end] = MASK_CHAR * (end - start)
        return "".join(chars)

    def check(self, text: str) -> Verdict:
        """Judge a whole reply (blocked under ``regenerate``: the text is the replacement, what
        the reply becomes if no new one passes)."""
        reasons: list[str] = []
        if self.spans(text):
            reasons.append("blocklist")
        if self.classifier is not None and self._classify(text):
            reasons.append("classifier")
        if not reasons:
            return Verdict(False, text)
        if self.action == "mask" and reasons == ["blocklist"]:
            return Verdict(True, self.mask(text), tuple(reasons))
        return Verdict(True, self.replacement, tuple(reasons))

    def blocks(self, text: str) -> bool:
        """Whether ``text`` matches (what training leaves out with ``exclude_from_training``)."""
        return self.check(text).blocked

    def _classify(self, text: str) -> bool:
        assert self.classifier is not None
        try:
            return bool(self.classifier(text))
        except Exception:  # a broken hook must not let text through unchecked
            log.exception("the safety classifier failed; treating the reply as blocked")
            return True


SEED_BITS = 31


def regeneration_seed(request: ChatRequest, attempt: int) -> int:
    """The seed of ``request``'s ``attempt``-th regeneration (1, 2, …): derived from its own
    seed when it has one (so a seeded request regenerates the same way every time), else from
    its id; different from the request's seed and from every other attempt's."""
    base = str(request.sampling.seed) if request.sampling.seed is not None else request.id
    digest = hashlib.sha256(f"{base}:regenerate:{attempt}".encode()).digest()
    seed = int.from_bytes(digest[:8], "big") % (1 << SEED_BITS)
    return seed + 1 if seed == request.sampling.seed else seed


def regeneration(request: ChatRequest, attempt: int) -> ChatRequest:
    """The request that asks again for a reply to ``request``'s message, its reply having
    been blocked: id ``<id>~regen<attempt>`` (never the id of a platform message, which are
    claimed once), another seed, and ``regenerates`` naming the original request (also for
    the second and later attempts: the stored exchange is keyed by the message it answers)."""
    if attempt < 1:
        raise ValueError(f"a regeneration attempt counts from 1, not {attempt}")
    original = request.answers
    sampling = msgspec.structs.replace(request.sampling, seed=regeneration_seed(request, attempt))
    return msgspec.structs.replace(
        request, id=f"{original}~regen{attempt}", sampling=sampling, regenerates=original
    )


def training_exclusion(settings: SafetySettings) -> Callable[[str], bool] | None:
    """The predicate that keeps matching messages out of training data, or ``None`` when
    ``exclude_from_training`` is off or the filter is empty."""
    safety = SafetyFilter.from_settings(settings)
    if not settings.exclude_from_training or not safety.active:
        return None
    return safety.blocks


class StreamGuard:
    """Releases a streaming reply's text only where no match can still form, masked.

    Feed it the whole text so far (:meth:`visible`); it returns the prefix that is safe to
    show. At the end, :meth:`final` judges the whole reply.
    """

    def __init__(self, safety: SafetyFilter) -> None:
        self.safety = safety

    def visible(self, text: str) -> str:
        if not self.safety.active:
            return text
        if self.safety.classifier is not None:
            return ""  # a classifier judges whole replies: show nothing until it has
        stable = self._stable_length(text)
        return self.safety.mask(text)[:stable]

    def final(self, text: str) -> Verdict:
        return self.safety.check(text)

    def _stable_length(self, text: str) -> int:
        """Length of the prefix that no later text can turn into (part of) a match."""
        end = len(text)
        last_break = max(text.rfind(" "), text.rfind("\n"))
        unfinished = end - (last_break + 1)  # the last word may still grow
        return max(0, end - max(unfinished, 0) - self.safety.holdback_chars)
