"""Tokenizers: characters (any Unicode, CJK included) and byte-level BPE.

Both kinds share one small interface, :class:`Tokenizer`, and one on-disk form: a single
``tokenizer.json`` in a checkpoint directory (JSON only, never pickle). Role markers are
special tokens, and ``encode`` parses them out of the text, so a formatted training text
such as ``"<|user|>hi<|eot|><|bot|>hello<|eot|>"`` encodes to the ids the model should see.

The character tokenizer encodes with ``str.translate``: every character is mapped to the
character whose code point is its id, and the resulting string is read back as UTF-32
integers by numpy. That keeps a 10 MB corpus in C code instead of a Python loop per char.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from bot.errors import ModelError

log = logging.getLogger(__name__)

USER = "<|user|>"
BOT = "<|bot|>"
EOT = "<|eot|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
SPECIALS: tuple[str, ...] = (PAD, USER, BOT, EOT)
"""Every tokenizer has these, with ids 0..3 in this order (the char one adds ``UNK`` as 4)."""

TOKENIZER_FILE = "tokenizer.json"
_CHAR_FORMAT_VERSION = 1


def _special_pattern(specials: Iterable[str]) -> re.Pattern[str]:
    # A capturing group makes re.split keep the specials between the plain-text pieces.
    return re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")


class Tokenizer(ABC):
    """Text <-> token ids. Special-token strings in the text are parsed into their ids."""

    kind: ClassVar[Literal["char", "bpe"]]

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def token_id(self, token: str) -> int:
        """The id of a special token; raises ``KeyError`` for one this tokenizer lacks."""

    @property
    def pad_id(self) -> int:
        return self.token_id(PAD)

    @property
    def user_id(self) -> int:
        return self.token_id(USER)

    @property
    def bot_id(self) -> int:
        return self.token_id(BOT)

    @property
    def eot_id(self) -> int:
        return self.token_id(EOT)

    @property
    @abstractmethod
    def special_ids(self) -> frozenset[int]: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str: ...

    @abstractmethod
    def save(self, directory: Path) -> Path:
        """Write ``tokenizer.json`` into ``directory`` and return its path."""


# -------------------------------------------------------------------------------- characters


class _UnknownToUnk(dict[int, str]):
    """A ``str.translate`` table that maps every character it lacks to the ``<|unk|>`` id."""

    def __init__(self, table: dict[int, str], unk: str) -> None:
        super().__init__(table)
        self._unk = unk

    def __missing__(self, key: int) -> str:
        return self._unk


class CharTokenizer(Tokenizer):
    """One id per character. Ids 0..4 are the specials; characters follow in code-point order."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ModelError("char tokenizer: vocabulary must be distinct single characters")
        self._itos: list[str] = [*SPECIALS, UNK, *chars]
        self._stoi = {s: i for i, s in enumerate(self._itos)}
        n_special = len(SPECIALS) + 1
        self._special_ids = frozenset(range(n_special))
        # Encode: char -> the char whose code point is its id. Decode: the reverse, with
        # specials spelled out or dropped.
        self._encode_table = _UnknownToUnk(
            {ord(c): chr(i) for i, c in enumerate(self._itos) if i >= n_special},
            unk=chr(self._stoi[UNK]),
        )
        self._decode_all = {i: s for i, s in enumerate(self._itos)}
        self._decode_text = {i: ("" if i < n_special else s) for i, s in enumerate(self._itos)}
        self._split = _special_pattern([*SPECIALS, UNK])

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    @property
    def chars(self) -> list[str]:
        return self._itos[len(self._special_ids) :]

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    @property
    def unk_id(self) -> int:
        return self._stoi[UNK]

    def token_id(self, token: str) -> int:
        return self._stoi[token]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, piece in enumerate(self._split.split(text)):
            if i % 2:  # odd pieces are the captured specials
                ids.append(self._stoi[piece])
            elif piece:
                ids.extend(self._encode_plain(piece).tolist())
        return ids

    def _encode_plain(self, text: str) -> np.ndarray:
        mapped = text.translate(self._encode_table)
        # Ids up to 0x10FFFF are valid code points; surrogates (ids 0xD800..0xDFFF, a CJK-heavy
        # vocabulary could reach them) need 'surrogatepass' to survive the round trip.
        return np.frombuffer(mapped.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        table = self._decode_text if skip_special else self._decode_all
        try:
            return "".join(table[int(i)] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is outside the vocabulary") from None

    def save(self, directory: Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        data = {"kind": "char", "version": _CHAR_FORMAT_VERSION, "chars": "".join(self.chars)}
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CharTokenizer:
        if data.get("version") != _CHAR_FORMAT_VERSION or not isinstance(data.get("chars"), str):
            raise ModelError(f"char tokenizer: unsupported format {data.get('version')!r}")
        return cls(list(data["chars"]))


def train_char_tokenizer(texts: Iterable[str], min_count: int = 1) -> CharTokenizer:
    """A character vocabulary of every char seen at least ``min_count`` times."""
    counts: Counter[str] = Counter()
    strip = _special_pattern([*SPECIALS, UNK])
    for text in texts:
        counts.update(strip.sub("", text))  # Counter over a str counts chars in C
    chars = sorted(c for c, n in counts.items() if n >= min_count)
    log.info("char tokenizer: %d chars (%d seen, min_count=%d)", len(chars), len(counts), min_count)
    return CharTokenizer(chars)


# ---------------------------------------------------------------------------------- byte BPE


class BPETokenizer(Tokenizer):
    """Byte-level BPE from HF ``tokenizers``: no unknown tokens, any Unicode round-trips."""

    kind = "bpe"

    def __init__(self, hf: Any) -> None:  # tokenizers.Tokenizer; untyped library
        self._hf = hf
        ids = {s: hf.token_to_id(s) for s in SPECIALS}
        if any(i is None for i in ids.values()):
            raise ModelError(f"bpe tokenizer: missing special tokens, need {SPECIALS}")
        self._ids: dict[str, int] = ids
        self._special_ids = frozenset(ids.values())

    @property
    def vocab_size(self) -> int:
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    def token_id(self, token: str) -> int:
        return self._ids[token]

    def encode(self, text: str) -> list[int]:
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self._hf.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encodings]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return str(self._hf.decode([int(i) for i in ids], skip_special_tokens=skip_special))

    def save(self, directory: Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        self._hf.save(str(path))
        return path

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_str(text))
        except Exception as e:  # the Rust side raises plain Exception subclasses
            raise ModelError(f"bpe tokenizer: cannot parse tokenizer.json: {e}") from e


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (specials included) on ``texts``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIALS):
        raise ModelError(f"bpe vocab_size must be >= {len(alphabet) + len(SPECIALS)}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),  # ids 0..3, and never merged into other tokens
        initial_alphabet=alphabet,
        show_progress=False,
    )
    strip = _special_pattern(SPECIALS)
    # Learn merges on the text between role markers, so no merge spans a turn boundary.
    hf.train_from_iterator((strip.sub("\n", t) for t in texts), trainer=trainer)
    log.info("bpe tokenizer: %d tokens", hf.get_vocab_size(with_added_tokens=True))
    return BPETokenizer(hf)


# ----------------------------------------------------------------------------------- loading


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load whichever tokenizer ``directory/tokenizer.json`` holds."""
    path = Path(directory) / TOKENIZER_FILE
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise ModelError(f"{path}: tokenizer file missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: cannot read tokenizer: {e}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a tokenizer file")
    if data.get("kind") == "char":
        return CharTokenizer.from_json(data)
    if isinstance(data.get("model"), dict) and data["model"].get("type") == "BPE":
        return BPETokenizer.from_json(text)
    raise ModelError(f"{path}: unknown tokenizer kind")
