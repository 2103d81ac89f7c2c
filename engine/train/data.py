"""Training data as token streams: conversations -> texts -> one long token array per split.

nanoGPT style: each split is the concatenation of its conversations' training texts (every
conversation opens with ``<|user|>``, so the boundaries stay visible to the model), and a
batch is ``B`` random windows of ``T + 1`` tokens from that stream. Random windows make an
"epoch" meaningless, which is what a wall-clock budget wants anyway.

Tokenizing the 14 MB chitchat corpus takes a few seconds (BPE); the arrays are cached as
``.npy`` files keyed by a hash of the texts and the tokenizer, so a second run, the
benchmark's several models, and ``parley eval`` start at once.

Bits per character need the character count of the text the tokens encode; a special token
counts as one character (so a char model's bpc is exactly its loss / ln 2, and a BPE model is
measured over the same count of characters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from engine.data import describe, format_conversations, load_sources
from engine.data.conversation import Conversation
from engine.data.remembered import AuthoredTurns, remembered_turns
from engine.quality.splits import DEFAULT_TEST_FRACTION, split_three
from engine.quality.words import strict_vocabulary, word_counts
from engine.tokenizer import SPECIALS, Tokenizer, train_bpe_tokenizer, train_char_tokenizer

log = logging.getLogger(__name__)

_SPECIAL_RE = re.compile("|".join(re.escape(s) for s in SPECIALS))


@dataclass(frozen=True)
class TextSplits:
    """Training, validation and test texts, and where they came from.

    ``val`` is for decisions (checkpoint selection, early stop, the publish gate); ``test``
    is only ever reported (``parley eval``, ``bench/quality.py``).
    """

    train: list[str]
    val: list[str]
    provenance: dict[str, object]
    test: list[str] = field(default_factory=list)
    remembered: list[AuthoredTurns] = field(default_factory=list)
    """The training conversations' authored turns, for the checkpoint's remembered replies
    (:mod:`engine.data.remembered`)."""


@dataclass(frozen=True)
class TokenSplit:
    """One split as a token stream plus the character count it encodes (for bpc)."""

    tokens: np.ndarray  # (N,) int32
    n_chars: int

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class TrainData:
    """What a training run reads: both token streams and the training text's words."""

    train: TokenSplit
    val: TokenSplit
    vocabulary: set[str]
    """The training text's strict vocabulary, the reference for ``word_validity``."""


def load_texts(
    specs: Sequence[str],
    *,
    include_bot: bool = False,
    opted_out: Sequence[str] = (),
    val_fraction: float = 0.05,
    split_seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> TextSplits:
    """Read the ``--data`` sources, split by conversation (:mod:`engine.quality.splits`:
    train, validation, test), and format each side as text.

    Raises :class:`~bot.errors.DataError` (file and line) for a source it cannot read.
    """
    conversations: list[Conversation] = load_sources(specs, opted_out=opted_out)
    sides = split_three(
        conversations, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed
    )
    train = format_conversations(sides.train, include_bot=include_bot, min_turns=2)
    val = format_conversations(sides.validation, include_bot=include_bot, min_turns=2)
    test = format_conversations(sides.test, include_bot=include_bot, min_turns=2)
    remembered = remembered_turns(sides.train, include_bot=include_bot)
    provenance: dict[str, object] = {
        "data": list(specs),
        "include_bot": include_bot,
        "opted_out_users": len(opted_out),
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "split_seed": split_seed,
        "conversations": {
            "train": len(sides.train),
            "val": len(sides.validation),
            "test": len(sides.test),
        },
        "texts": {"train": len(train), "val": len(val), "test": len(test)},
        "characters": {"train": count_chars(train), "val": count_chars(val)},
        "sources": describe(conversations),
    }
    return TextSplits(train, val, provenance, test, remembered)


def count_chars(texts: Sequence[str]) -> int:
    """Characters in ``texts`` with each special token counted as one."""
    total = 0
    for text in texts:
        n_special = len(_SPECIAL_RE.findall(text))
        total += len(_SPECIAL_RE.sub("", text)) + n_special
    return total


def training_vocabulary(texts: Sequence[str]) -> set[str]:
    """The strict vocabulary of the training texts (:mod:`engine.quality.words`): words
    seen at least 3 times, short ones only if common; role markers removed."""
    return set(strict_vocabulary(word_counts(texts)))


def fit_tokenizer(kind: str, texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train a ``char`` or ``bpe`` tokenizer on the training texts."""
    if kind == "char":
        return train_char_tokenizer(texts)
    if kind == "bpe":
        return train_bpe_tokenizer(texts, vocab_size)
    raise ValueError(f"tokenizer must be 'char' or 'bpe', not {kind!r}")


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A hash of the tokenizer's saved form: two tokenizers that encode alike hash alike."""
    with tempfile.TemporaryDirectory() as tmp:
        data = tokenizer.save(Path(tmp)).read_bytes()
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def encode_split(
    tokenizer: Tokenizer, texts: Sequence[str], cache_dir: Path | None = None
) -> TokenSplit:
    """Encode ``texts`` into one stream, reading/writing ``cache_dir/<hash>.npy`` if given."""
    path = None
    if cache_dir is not None:
        key = f"{texts_fingerprint(texts)}-{tokenizer_fingerprint(tokenizer)}"
        path = Path(cache_dir) / f"tokens-{key}.npy"
        meta = path.with_suffix(".json")
        if path.is_file() and meta.is_file():
            n_chars = int(json.loads(meta.read_text())["n_chars"])
            return TokenSplit(np.load(path), n_chars)
    ids = tokenizer.encode_batch(list(texts))
    tokens = np.fromiter((i for row in ids for i in row), dtype=np.int32)
    split = TokenSplit(tokens, count_chars(texts))
    if path is not None:
        _write_cache(path, split)
    return split


def _write_cache(path: Path, split: TokenSplit) -> None:
    # Write then rename, so a concurrent reader (another rank, another run) never sees half.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{id(split)}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, split.tokens)
    path.with_suffix(".json").write_text(json.dumps({"n_chars": split.n_chars}))
    tmp.replace(path)
    log.info("cached %d tokens in %s", len(split), path)


# ------------------------------------------------------------------------------------ batches


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of one step's random draws (batch windows, dropout): a pure function.

    Deriving it rather than carrying generators along means a resumed run draws exactly what
    an uninterrupted one would, with no RNG state to save, whatever the world size.
    """
    return ((seed * 1_000_003 + step) * 1_009 + rank) % (2**63)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, rank))


def random_windows(
    tokens: Tensor, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows: inputs (B, T) and next-token targets (B, T)."""
    n_starts = tokens.shape[0] - block_size - 1
    if n_starts < 1:
        raise ValueError(f"only {tokens.shape[0]} tokens; need more than block_size + 1")
    starts = torch.randint(0, n_starts, (batch_size,), generator=generator)  # (B,)
    index = starts[:, None] + torch.arange(block_size + 1)  # (B, T+1)
    windows = tokens[index].long()  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]


def eval_windows(
    tokens: Tensor, block_size: int, max_windows: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """Non-overlapping windows over the stream: (N, T+1) full ones and the (1, t+1) tail.

    Consecutive windows share one boundary token, so every token after the first is a
    target exactly once, and the losses sum to the stream's total. With ``max_windows``,
    evenly spaced full windows only (a fixed subset, so the evaluations of one run compare).
    """
    n = (tokens.shape[0] - 1) // block_size
    index = torch.arange(n)[:, None] * block_size + torch.arange(block_size + 1)  # (N, T+1)
    if max_windows is not None and n > max_windows:
        keep = torch.linspace(0, n - 1, max_windows).round().long()
        return tokens[index[keep]].long(), None
    tail_start = n * block_size
    tail = tokens[tail_start:].long()[None] if tokens.shape[0] - tail_start > 1 else None
    return tokens[index].long(), tail


def chars_per_token(split: TokenSplit) -> float:
    return split.n_chars / max(1, len(split))


def nats_to_bpc(total_nats: float, n_chars: float) -> float:
    return total_nats / math.log(2) / n_chars
