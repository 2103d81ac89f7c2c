"""How the engine picks a reply (``[reply] mode``): generated, remembered, or the best of both.

- ``generate``: the scheduler samples one reply and streams it token by token.
- ``retrieve``: before anything is generated, the picker searches the model's remembered
  replies (its training conversations, :mod:`engine.data.remembered`) for the ``k`` whose
  preceding turn best matches the message, and the scheduler sends the best of them by the
  model's score, whole, as soon as it is chosen. Nothing matches (or the model carries no
  remembered replies): the reply is generated and streamed as in ``generate``.
- ``hybrid``: the scheduler samples ``n`` replies in one batched step (not streamed: a reply
  is chosen once all are done), and the picker chooses among them and the ``k`` remembered.

Remembered candidates honour consent and the safety filter at the moment they are served:
nothing by a user who opted out or was forgotten (the worker keeps :meth:`exclude` up to date
from Redis, and a ``/forget`` reaching this engine applies at once), nothing the filter
blocks. The score is :mod:`engine.quality.candidates`' (likelihood, PMI, or PMI fused with
the TF-IDF cosine of conversation and candidate; repeats of the bot's last lines penalised);
it runs in the torch thread as one batched forward pass over the candidates, and a
candidate's context-free likelihood (PMI's other half) is computed once per model and
remembered. The TF-IDF vectorizer is fitted on the model's remembered turns when they load.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bot.safety import SafetyFilter
from bot.settings import ReplySettings
from bot.wire import Turn
from engine.checkpoint import Checkpoint
from engine.data.remembered import REPLIES_FILE, ReplyPair, read_reply_pairs
from engine.quality.candidates import Ranking, ReplyIndex, choose
from engine.quality.relevance import TfidfRanker

log = logging.getLogger(__name__)

PRIOR_CACHE_SIZE = 50_000
"""Candidates whose context-free likelihood is remembered, per model."""
RECENT_BOT_LINES = 3
"""The bot's last lines a candidate is penalised for repeating."""


@dataclass(eq=False)
class _Memory:
    """One model's remembered replies, the priors computed for it and, for ``fused``
    ranking, the TF-IDF vectorizer fitted on its remembered turns."""

    index: ReplyIndex | None
    lexical: TfidfRanker | None = None
    priors: OrderedDict[str, float] = field(default_factory=OrderedDict)


class ReplyPicker:
    """The remembered candidates and the choice between candidates, for every model served.

    :meth:`prepare` loads a model's remembered replies (call it off the torch thread, before
    the model is served; a model not prepared is prepared on first use). Everything else runs
    in the torch thread, except :meth:`exclude`, which any thread may call.
    """

    def __init__(self, settings: ReplySettings, safety: SafetyFilter | None = None) -> None:
        self.settings = settings
        self._safety = safety
        self._memories: dict[str, _Memory] = {}
        self._lock = threading.Lock()
        self._excluded: frozenset[str] = frozenset()

    @property
    def mode(self) -> str:
        return self.settings.mode

    def prepare(self, checkpoint: Checkpoint) -> None:
        """Load ``checkpoint``'s remembered replies, if the mode uses them and it has them."""
        with self._lock:
            if checkpoint.version in self._memories:
                return
        memory = _Memory(None) if self.mode == "generate" else self._load(checkpoint)
        with self._lock:
            self._memories.setdefault(checkpoint.version, memory)

    def _load(self, checkpoint: Checkpoint) -> _Memory:
        path = checkpoint.path / REPLIES_FILE
        if not path.is_file():
            log.warning(
                "model %s has no %s: reply mode %r generates every reply",
                checkpoint.version,
                REPLIES_FILE,
                self.mode,
            )
            return _Memory(None)
        pairs = list(read_reply_pairs(path))
        index = ReplyIndex(pairs)
        log.info("model %s remembers %d replies", checkpoint.version, index.size)
        if self.settings.ranking != "fused":
            return _Memory(index)
        turns = dict.fromkeys(text for p in pairs for text in (p.turn, p.reply))
        try:
            return _Memory(index, TfidfRanker(turns))
        except ValueError as e:
            log.warning("model %s: %s; ranking by PMI alone", checkpoint.version, e)
            return _Memory(index)

    def forget_model(self, version: str) -> None:
        """``version`` is no longer served: drop its index."""
        with self._lock:
            memory = self._memories.pop(version, None)
        if memory is not None and memory.index is not None:
            memory.index.close()

    def exclude(self, users: Iterable[str]) -> None:
        """From now on, leave out remembered replies by ``users`` (and whoever was already)."""
        with self._lock:
            self._excluded = self._excluded | frozenset(users)

    def set_excluded(self, users: Iterable[str]) -> None:
        """Exactly ``users`` are left out (the opted-out set as Redis holds it now)."""
        with self._lock:
            self._excluded = frozenset(users)

    # -- the torch thread ------------------------------------------------------------------

    def remembered(self, checkpoint: Checkpoint, message: str) -> list[str]:
        """The ``k`` remembered replies that best match ``message`` and may be served."""
        memory = self._memory(checkpoint)
        if memory.index is None:
            return []
        return memory.index.search(message, self.settings.k, allow=self._allowed)

    def choose(
        self,
        checkpoint: Checkpoint,
        prompt: str,
        candidates: Sequence[str],
        history: Sequence[Turn],
    ) -> str:
        """The best of ``candidates`` after ``prompt`` (which ends in ``<|bot|>``)."""
        memory = self._memory(checkpoint)
        recent = [t.text for t in history if t.role == "bot"][-RECENT_BOT_LINES:]
        chosen = choose(
            checkpoint.model,
            checkpoint.tokenizer,
            prompt,
            candidates,
            recent_bot_lines=recent,
            ranking=self._ranking(memory),
            lexical=memory.lexical,
            lexical_weight=self.settings.lexical_weight,
            repeat_penalty=self.settings.repeat_penalty,
            prior_cache=memory.priors,
        )
        while len(memory.priors) > PRIOR_CACHE_SIZE:
            memory.priors.popitem(last=False)
        return chosen.reply

    def _ranking(self, memory: _Memory) -> Ranking:
        """The configured ranking; ``fused`` falls back to PMI for a model that remembers
        nothing (no turns to fit the TF-IDF vectorizer on)."""
        ranking = self.settings.ranking
        return "pmi" if ranking == "fused" and memory.lexical is None else ranking

    def _allowed(self, pair: ReplyPair) -> bool:
        if pair.author and pair.author in self._excluded:
            return False
        return self._safety is None or not self._safety.blocks(pair.reply)

    def _memory(self, checkpoint: Checkpoint) -> _Memory:
        memory = self._memories.get(checkpoint.version)
        if memory is None:
            self.prepare(checkpoint)
            memory = self._memories[checkpoint.version]
        return memory
