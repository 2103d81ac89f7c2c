"""Reply candidates: full-text retrieval of past replies, and choosing the best candidate."""

from __future__ import annotations

import pytest
import torch

from engine.data.formatting import format_turns
from engine.data.remembered import ReplyPair
from engine.models import ModelConfig, build_model
from engine.quality.candidates import ReplyIndex, choose, score
from engine.quality.relevance import PRIOR_PROMPT, TfidfRanker, reply_loglik
from engine.tokenizer import train_char_tokenizer

TEXTS = [
    format_turns([("user", "do you like jazz music?"), ("bot", "yes, mostly bebop")]),
    format_turns([("user", "any plans for the weekend?"), ("bot", "hiking if it's sunny")]),
    format_turns(
        [("user", "what music do you play?"), ("bot", "piano"), ("user", "nice"), ("bot", "thanks")]
    ),
]


def test_retrieval_finds_replies_to_turns_that_share_the_words() -> None:
    index = ReplyIndex.from_texts(TEXTS)
    assert index.size == 5  # every consecutive pair of turns
    assert index.search("I love jazz", 3) == ["yes, mostly bebop"]
    assert set(index.search("music", 5)) == {"yes, mostly bebop", "piano"}
    assert index.search("weekend plans?", 1) == ["hiking if it's sunny"]
    assert index.search("zebra", 3) == [] and index.search("!!", 3) == []
    index.close()


def test_retrieval_queries_cannot_inject_fts_syntax() -> None:
    index = ReplyIndex.from_texts(TEXTS)
    for message in ['jazz" OR "', "NEAR(jazz music)", "jazz AND -music*", "col:jazz", "^jazz"]:
        assert "yes, mostly bebop" in index.search(message, 3)  # words only, never syntax
    index.close()


def _tiny() -> tuple[torch.nn.Module, object]:
    tokenizer = train_char_tokenizer(TEXTS)
    torch.manual_seed(0)
    config = ModelConfig(
        arch="gpt", vocab_size=tokenizer.vocab_size, n_embd=16, n_layer=1, n_head=2,
        block_size=128,
    )  # fmt: skip
    return build_model(config), tokenizer


PROMPT = "<|user|>do you like jazz?<|eot|><|bot|>"
CANDIDATES = ["yes, mostly bebop", "piano", "hiking if it's sunny", "thanks"]


def test_choose_takes_the_likeliest_candidate_and_penalises_repeats() -> None:
    model, tokenizer = _tiny()
    scores = reply_loglik(model, tokenizer, PROMPT, CANDIDATES)  # type: ignore[arg-type]
    best = CANDIDATES[max(range(4), key=lambda i: scores[i])]
    got = choose(model, tokenizer, PROMPT, [*CANDIDATES, best, "  "])  # type: ignore[arg-type]
    assert got.reply == best
    assert got.candidates == tuple(CANDIDATES)  # duplicates and blank lines dropped
    assert got.scores == pytest.approx(scores)
    repeated = choose(
        model, tokenizer, PROMPT, CANDIDATES, recent_bot_lines=[best.upper() + "!"],  # type: ignore[arg-type]
        repeat_penalty=100.0,
    )  # fmt: skip
    assert repeated.reply != best


def test_pmi_ranking_subtracts_the_context_free_likelihood() -> None:
    model, tokenizer = _tiny()
    conditional = reply_loglik(model, tokenizer, PROMPT, CANDIDATES)  # type: ignore[arg-type]
    prior = reply_loglik(model, tokenizer, PRIOR_PROMPT, CANDIDATES)  # type: ignore[arg-type]
    got = choose(model, tokenizer, PROMPT, CANDIDATES, ranking="pmi")  # type: ignore[arg-type]
    assert got.scores == pytest.approx([c - p for c, p in zip(conditional, prior, strict=True)])


def test_no_candidates_is_a_value_error() -> None:
    model, tokenizer = _tiny()
    with pytest.raises(ValueError):
        choose(model, tokenizer, PROMPT, ["", " "])  # type: ignore[arg-type]


def test_pmi_ranking_needs_the_prior() -> None:
    model, tokenizer = _tiny()
    scored = score(model, tokenizer, PROMPT, CANDIDATES)  # type: ignore[arg-type]
    assert len(scored.ranked("likelihood")) == len(CANDIDATES)
    with pytest.raises(ValueError, match="prior"):
        scored.ranked("pmi")


def test_retrieval_keeps_accents_and_queries_by_the_rarest_words() -> None:
    pairs = [ReplyPair("un café, s'il vous plaît", "voilà", "a")]
    pairs += [ReplyPair("un cafe", "no accent here", "b")]
    pairs += [ReplyPair(f"the the the word{i}", f"reply {i}", "c") for i in range(20)]
    index = ReplyIndex(pairs)
    assert index.search("café", 1) == ["voilà"]
    # Many common words and one rare one: the rare one decides.
    assert index.search("the the the cafe the", 1) == ["no accent here"]
    index.close()


def test_retrieval_leaves_out_what_allow_refuses() -> None:
    pairs = [ReplyPair("do you like tea", f"tea reply {i}", f"user{i}") for i in range(5)]
    index = ReplyIndex(pairs)
    everyone = index.search("tea", 5)
    assert sorted(everyone) == sorted(p.reply for p in pairs)
    kept = index.search("tea", 5, allow=lambda p: p.author != "user2" and "3" not in p.reply)
    assert sorted(kept) == ["tea reply 0", "tea reply 1", "tea reply 4"]
    index.close()


def test_fused_ranking_adds_the_shared_words_to_pmi() -> None:
    model, tokenizer = _tiny()
    ranker = TfidfRanker([*CANDIDATES, *CANDIDATES])  # every candidate's words kept (df 2)
    prompt = "<|user|>sunny today, any hiking?<|eot|><|bot|>"
    pmi = choose(model, tokenizer, prompt, CANDIDATES, ranking="pmi")  # type: ignore[arg-type]
    lexical = ranker.scores([("user", "sunny today, any hiking?")], CANDIDATES)
    assert lexical[2] > 0 == max(lexical[:2] + lexical[3:])  # only the hiking line shares words
    got = choose(
        model, tokenizer, prompt, CANDIDATES, ranking="fused", lexical=ranker,  # type: ignore[arg-type]
        lexical_weight=2.5,
    )  # fmt: skip
    assert got.scores == pytest.approx(
        [p + 2.5 * t for p, t in zip(pmi.scores, lexical, strict=True)]
    )
    # A large weight lets the shared words decide.
    words_win = choose(
        model, tokenizer, prompt, CANDIDATES, ranking="fused", lexical=ranker,  # type: ignore[arg-type]
        lexical_weight=1000.0,
    )  # fmt: skip
    assert words_win.reply == "hiking if it's sunny"


def test_the_tfidf_ranker_fits_a_tiny_archive_and_refuses_no_words() -> None:
    tiny = TfidfRanker(["green tea", "hiking"])  # no term in two turns: all of them kept
    assert tiny.scores([("user", "tea?")], ["green tea", "hiking"])[0] > 0
    with pytest.raises(ValueError, match="no words"):
        TfidfRanker(["!!", "?"])


def test_fused_ranking_needs_the_tfidf_scores() -> None:
    model, tokenizer = _tiny()
    scored = score(model, tokenizer, PROMPT, CANDIDATES, with_prior=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="TF-IDF"):
        scored.ranked("fused", 1.0)
