"""A conversation far longer than the GPT's window keeps getting replies as good as early on.

A tiny GPT (a 64-token window, 4 attention sinks) is trained for a few seconds on chats where
the bot answers the user's letter in upper case: ``<|user|>c<|eot|><|bot|>C<|eot|>``. That
needs attention on the latest turn, so a window that slid wrongly (lost positions, keys not
rotated back, sinks dropped) shows up as a wrong or unsure answer. Then, some 10,000
characters into a conversation — the window has slid dozens of times — the loss of the
reference reply and the engine's greedy replies must be as good as at 1,000 characters, on
both paths: continuing cached state (the window slides) and recomputing a cache miss from the
stored history (the prompt is cut to the window).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from bot.settings import EngineSettings, SamplingSettings
from bot.wire import Sampling, Turn
from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.data.formatting import format_prompt
from engine.models import ModelConfig, build_model
from engine.serve.batches import PrefillBatch, serving_copy
from engine.serve.scheduler import Scheduler
from engine.tokenizer import train_char_tokenizer
from tests.unit.test_scheduler import make_work, replies, run_all

LETTERS = "abcdefghij"
CONFIG = ModelConfig(arch="gpt", n_embd=64, n_layer=2, n_head=2, block_size=64, attn_sinks=4)
GREEDY = Sampling(temperature=0.0, repetition_penalty=1.0, max_new_tokens=3)


def exchanges(n: int, rng: random.Random) -> list[tuple[str, str]]:
    return [(c, c.upper()) for c in (rng.choice(LETTERS) for _ in range(n))]


def as_text(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<|user|>{u}<|eot|><|bot|>{b}<|eot|>" for u, b in pairs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    torch.manual_seed(0)
    tokenizer = train_char_tokenizer([LETTERS + LETTERS.upper()])
    data = torch.tensor(tokenizer.encode(as_text(exchanges(5000, random.Random(0)))))
    model = build_model(CONFIG.with_vocab(tokenizer.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    T = CONFIG.block_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds waiting
    try:
        for _ in range(400):  # windows start anywhere, as a slid window does
            starts = torch.randint(0, len(data) - T - 1, (32,))
            x = torch.stack([data[i : i + T] for i in starts])  # (32, T)
            y = torch.stack([data[i + 1 : i + T + 1] for i in starts])
            logits, _ = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    path = save_checkpoint(
        tmp_path_factory.mktemp("long") / "v1",
        model,
        tokenizer,
        preset="test-long",
        metrics={},
        provenance={},
    )
    return load_checkpoint(path, device="cpu")


@torch.inference_mode()
def reply_loss(ckpt: Checkpoint, history: list[tuple[str, str]], probes: int = 20) -> float:
    """Mean per-token loss of the reference reply ("X<|eot|>") to a new letter, after the model
    consumed ``history`` through the engine's prefill slots (sliding as it goes)."""
    model, tok = ckpt.model, ckpt.tokenizer
    batch = PrefillBatch(model, serving_copy(model, None), rows=1)
    batch.join(None)
    ids = tok.encode(as_text(history))
    for start in range(0, len(ids), 24):  # chunks of at most half the window
        batch.feed([ids[start : start + 24]])
    after_history = batch.raw_state(0)
    batch.leave(0)
    losses = []
    for user, bot in exchanges(probes, random.Random(len(history))):
        batch.join(after_history)  # a fresh copy of the state after the history
        prompt = tok.encode(f"<|user|>{user}<|eot|><|bot|>")
        reference = tok.encode(f"{bot}<|eot|>")
        for i, token in enumerate([*prompt, *reference[:-1]]):
            logits = batch.feed([[token]])[0]  # (V,) after this token
            if i >= len(prompt) - 1:  # it predicts the reference's next token
                target = torch.tensor([reference[i - len(prompt) + 1]])
                losses.append(float(F.cross_entropy(logits[None], target)))
        batch.leave(0)
    return sum(losses) / len(losses)


def test_reply_loss_after_10k_characters_is_as_good_as_after_1k(trained: Checkpoint) -> None:
    rng = random.Random(1)
    long = exchanges(330, rng)  # ~10,000 characters of formatted conversation
    assert len(as_text(long)) >= 10_000
    short = long[:33]  # ~1,000
    loss_1k, loss_10k = reply_loss(trained, short), reply_loss(trained, long)
    assert loss_1k < 0.3, f"the tiny model did not learn its task (loss {loss_1k:.3f})"
    assert loss_10k <= loss_1k + 0.05, (loss_1k, loss_10k)


def scheduler(ckpt: Checkpoint) -> Scheduler:
    settings = EngineSettings(stream_interval_ms=0, prefill_chunk_tokens=32)
    return Scheduler(ckpt, settings, SamplingSettings(), ckpt.model.device)


def test_engine_replies_stay_right_through_a_10k_character_conversation(
    trained: Checkpoint,
) -> None:
    """Every turn continues the cached state (the window slides); then a cache miss recomputes
    from the stored 10,000-character history (the prompt is cut to the window)."""
    s = scheduler(trained)
    rng = random.Random(2)
    history: tuple[Turn, ...] = ()
    right: list[bool] = []
    while len(format_prompt([(t.role, t.text) for t in history], "x")) < 10_000:
        letter = rng.choice(LETTERS)
        work = make_work("c", letter, history, rid=f"t{len(right)}", sampling=GREEDY)
        reply = replies(run_all(s, [work]))[work.request.id]
        right.append(reply == letter.upper())
        history += (Turn("user", letter), Turn("bot", reply))
    assert s._cache.hits == len(right) - 1  # every follow-up continued the cached state
    early, late = right[:33], right[-33:]
    assert sum(early) >= 30, f"{sum(early)}/33 right in the first 1,000 characters"
    assert sum(late) >= sum(early) - 1, f"{sum(late)}/33 right after 10,000 characters"
    fresh = scheduler(trained)
    misses = [make_work("c", c, history, rid=f"m{c}", sampling=GREEDY) for c in LETTERS]
    got = replies(run_all(fresh, misses))
    assert fresh._cache.hits == 0
    assert sum(got[w.request.id] == w.request.text.upper() for w in misses) >= 9
