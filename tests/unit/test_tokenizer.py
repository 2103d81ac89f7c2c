"""Character and byte-level BPE tokenizers: round trips, special tokens, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.errors import ModelError
from engine.tokenizer import (
    BOT,
    EOT,
    USER,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
    train_char_tokenizer,
)

CJK = "你好，今天天气怎么样？"
CORPUS = [
    f"{USER}hi there{EOT}{BOT}hello! how are you?{EOT}",
    f"{USER}{CJK}{EOT}{BOT}今天天气很好。{EOT}",
    "plain text with émojis 🙂 and tabs\tand\nnewlines",
] * 20
FORMATTED = f"{USER}hi{EOT}{BOT}hello{EOT}"


@pytest.fixture(scope="module")
def char_tok() -> CharTokenizer:
    return train_char_tokenizer(CORPUS)


@pytest.fixture(scope="module")
def bpe_tok() -> BPETokenizer:
    return train_bpe_tokenizer(CORPUS, vocab_size=320)


@pytest.fixture(params=["char", "bpe"])
def tok(
    request: pytest.FixtureRequest, char_tok: CharTokenizer, bpe_tok: BPETokenizer
) -> Tokenizer:
    return char_tok if request.param == "char" else bpe_tok


@pytest.mark.parametrize("text", ["hello! how are you?", CJK, "émojis 🙂\tand\nnewlines", ""])
def test_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_specials_are_parsed(tok: Tokenizer) -> None:
    ids = tok.encode(FORMATTED)
    assert ids[0] == tok.user_id and ids[-1] == tok.eot_id
    assert ids.count(tok.eot_id) == 2 and ids.count(tok.bot_id) == 1
    assert tok.decode(ids) == "hihello"
    assert tok.decode(ids, skip_special=False) == FORMATTED
    assert len({tok.pad_id, tok.user_id, tok.bot_id, tok.eot_id}) == 4
    assert {tok.pad_id, tok.user_id, tok.bot_id, tok.eot_id} <= tok.special_ids
    assert max(ids) < tok.vocab_size


def test_encode_batch_equals_encode(tok: Tokenizer) -> None:
    texts = [FORMATTED, CJK, "abc"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_save_load_gives_identical_ids(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.kind == tok.kind and loaded.vocab_size == tok.vocab_size
    for text in (FORMATTED, CJK, CORPUS[2]):
        assert loaded.encode(text) == tok.encode(text)
    assert loaded.eot_id == tok.eot_id


def test_char_vocab_is_deterministic_and_handles_unknowns(char_tok: CharTokenizer) -> None:
    assert train_char_tokenizer(reversed(CORPUS)).chars == char_tok.chars
    assert char_tok.chars == sorted(char_tok.chars)
    ids = char_tok.encode("hi ❄ 你")
    assert ids[3] == char_tok.unk_id
    assert char_tok.decode(ids) == "hi  你"


def test_char_min_count_drops_rare_chars() -> None:
    tok = train_char_tokenizer(["aaab", "aac"], min_count=2)
    assert tok.chars == ["a"]
    assert train_char_tokenizer([FORMATTED]).chars == sorted(set("hihello"))


def test_char_ids_past_the_surrogate_range_round_trip() -> None:
    # A big CJK vocabulary puts ids in 0xD800..0xDFFF, which are not valid code points.
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 60_000) if not 0xD800 <= c < 0xE000]
    tok = CharTokenizer(chars[:57_000])
    text = "".join(chars[55_000:57_000])
    ids = tok.encode(text)
    assert max(ids) > 0xD800 and tok.decode(ids) == text


def test_bpe_learns_merges(bpe_tok: BPETokenizer) -> None:
    assert bpe_tok.vocab_size == 320
    assert len(bpe_tok.encode("hello! how are you?")) < len("hello! how are you?")
    assert [bpe_tok.pad_id, bpe_tok.user_id, bpe_tok.bot_id, bpe_tok.eot_id] == [0, 1, 2, 3]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="missing"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelError):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "morse"}))
    with pytest.raises(ModelError, match="unknown"):
        load_tokenizer(tmp_path)
