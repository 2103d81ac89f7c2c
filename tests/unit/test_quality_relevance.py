"""Response selection: examples, the model's likelihood ranker, the TF-IDF floor, R@1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.data.formatting import format_turns
from engine.models import ModelConfig, build_model
from engine.quality.relevance import (
    PRIOR_PROMPT,
    SelectionExample,
    TfidfRanker,
    build_examples,
    pmi_scores,
    r_at_1,
    reply_loglik,
    turns_of,
)
from engine.tokenizer import train_char_tokenizer

CONVERSATIONS = [
    format_turns([("user", f"question {i} about {topic}"), ("bot", f"answer {i} on {topic}")])
    + format_turns([("user", f"and more {topic}?"), ("bot", f"yes, {topic} {i}")])
    for i, topic in enumerate(["cats", "dogs", "rain", "jazz", "chess", "tea", "bikes", "maps"])
]


def test_turns_of_inverts_format_turns() -> None:
    turns = [("user", "hi\nthere"), ("bot", "hello <b>"), ("user", "")]
    assert turns_of(format_turns(turns)) == turns  # type: ignore[arg-type]


def test_examples_answer_a_user_turn_with_distractors_from_other_conversations() -> None:
    examples = build_examples(CONVERSATIONS, seed=3)
    assert len(examples) == 2 * len(CONVERSATIONS)  # every bot turn
    for ex in examples:
        assert len(ex.candidates) == 10 and ex.context[-1][0] == "user"
        own = next(t for t in CONVERSATIONS if ex.reply in t and ex.context[0][1] in t)
        assert all(d not in own for d in ex.candidates[1:])
        assert ex.reply not in ex.candidates[1:]
        assert ex.prompt().endswith("<|bot|>") and ex.prompt().startswith("<|user|>")
    assert build_examples(CONVERSATIONS, seed=3) == examples
    assert build_examples(CONVERSATIONS, seed=4) != examples
    drawn = build_examples(CONVERSATIONS, max_examples=5, seed=3)
    assert len(drawn) == 5 and all(
        ex.candidates[0] in CONVERSATIONS[0] + "".join(CONVERSATIONS) for ex in drawn
    )


def test_too_little_test_data_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        build_examples(CONVERSATIONS[:1])
    with pytest.raises(ValueError):
        build_examples([format_turns([("user", "only a question")])] * 3)


def test_r_at_1_counts_ties_as_misses() -> None:
    assert r_at_1([[2.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 3.0, 1.0], [5.0, 4.0, 4.0]]) == 0.5
    with pytest.raises(ValueError):
        r_at_1([])


def _tiny(arch: str) -> tuple[torch.nn.Module, object]:
    tokenizer = train_char_tokenizer(CONVERSATIONS)
    torch.manual_seed(0)
    config = ModelConfig(
        arch=arch, vocab_size=tokenizer.vocab_size, n_embd=16, n_layer=1, n_head=2,
        n_hidden=16, block_size=128,
    )  # fmt: skip
    return build_model(config), tokenizer


@pytest.mark.parametrize("arch", ["gpt", "gru"])
def test_reply_loglik_is_the_mean_log_probability_of_the_reply_and_its_end(arch: str) -> None:
    model, tokenizer = _tiny(arch)
    prompt = "<|user|>question about cats<|eot|><|bot|>"
    candidates = ["answer on cats", "no", "a much longer reply about other things"]
    batched = reply_loglik(model, tokenizer, prompt, candidates)  # type: ignore[arg-type]
    for text, got in zip(candidates, batched, strict=True):
        context = tokenizer.encode(prompt)  # type: ignore[attr-defined]
        reply = [*tokenizer.encode(text), tokenizer.eot_id]  # type: ignore[attr-defined]
        ids = torch.tensor([context + reply])
        with torch.no_grad():
            logits, _ = model(ids)
        logprobs = F.log_softmax(logits[0, len(context) - 1 : -1].float(), dim=-1)
        want = logprobs.gather(1, torch.tensor(reply)[:, None]).mean()
        assert got == pytest.approx(float(want), abs=1e-4)  # padding never leaks in


def test_long_contexts_keep_their_latest_tokens() -> None:
    model, tokenizer = _tiny("gpt")
    tail = "<|user|>question about cats<|eot|><|bot|>"
    keep = len(tokenizer.encode(tail))  # type: ignore[attr-defined]
    short = reply_loglik(model, tokenizer, tail, ["yes"], max_context_tokens=keep)  # type: ignore[arg-type]
    long = "x" * 500 + "<|eot|>" + tail
    padded = reply_loglik(model, tokenizer, long, ["yes"], max_context_tokens=keep)  # type: ignore[arg-type]
    assert short == pytest.approx(padded, abs=1e-5)
    assert reply_loglik(model, tokenizer, long, ["yes"]) != pytest.approx(short, abs=1e-5)  # type: ignore[arg-type]


def test_pmi_subtracts_the_context_free_likelihood() -> None:
    assert pmi_scores([[-1.0, -2.0]], [[-3.0, -1.0]]) == [[2.0, -1.0]]
    assert PRIOR_PROMPT == "<|user|>"


def test_tfidf_ranks_the_candidate_sharing_the_context_words_first() -> None:
    ranker = TfidfRanker.from_conversations(CONVERSATIONS)
    ex = SelectionExample(
        (("user", "question 3 about jazz"),),
        ("answer 3 on jazz", "yes, tea 5", "answer 6 on bikes"),
    )
    scores = ranker.scores(ex.context, ex.candidates)
    assert scores[0] > max(scores[1:])
    assert r_at_1(ranker.rank_all([ex])) == 1.0


def test_context_and_reply_are_cut_to_fit_the_block_size() -> None:
    model, tokenizer = _tiny("gpt")  # block_size 128
    prompt = "<|user|>" + "question about cats " * 20 + "<|eot|><|bot|>"
    long_reply = "answer " * 40
    got = reply_loglik(model, tokenizer, prompt, ["yes", long_reply], max_reply_tokens=400)  # type: ignore[arg-type]
    assert all(s < 0 for s in got)
