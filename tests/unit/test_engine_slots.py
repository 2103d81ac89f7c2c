"""Slot batches compute what the models' own (dynamic) paths compute, row for row.

The static decode step is what a CUDA graph captures on a GPU, so checking it against
``model(tokens, state)`` on CPU is what makes the GPU path correct by construction.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from engine.models import LanguageModel, ModelConfig, build_model
from engine.serve.batches import DecodeBatch, PrefillBatch, serving_copy
from engine.serve.cuda_graphs import graph_buckets
from tests.unit.engine_fixtures import DEVICES
from tests.unit.state_reference import empty_state, merge_states, split_state

V = 40
TINY = {
    "gru": ModelConfig(arch="gru", vocab_size=V, n_embd=16, n_hidden=32, n_layer=2),
    "gpt": ModelConfig(
        arch="gpt", vocab_size=V, n_embd=32, n_layer=2, n_head=4, block_size=24, attn_sinks=2
    ),
}
ATOL = 2e-5


def sharpened(model: LanguageModel) -> LanguageModel:
    """Larger weights than a fresh init, so a wrong row, mask or position shows in the logits."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(params=[(a, d) for d in DEVICES for a in sorted(TINY)], ids="-".join)
def model(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LanguageModel]:
    arch, device = request.param
    # cuDNN's GRU (the dynamic path's reference) computes in TF32 unless told not to: ~1e-3.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    with torch.device(device):  # the model, and every tensor a test makes, on that device
        yield sharpened(build_model(TINY[arch]))


def ids(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n,), generator=gen, device="cpu").tolist()


def prefilled(model: LanguageModel, prompt: list[int]):
    """The dynamic path: a one-row state after ``prompt``, and its last logits (V,)."""
    logits, state = model(torch.tensor([prompt]), empty_state(model, 1))
    return split_state(model, state)[0], logits[0, -1]


@torch.inference_mode()
def test_decode_step_equals_the_dynamic_path_row_for_row(model: LanguageModel) -> None:
    prompts = [ids(n, seed=n) for n in (3, 9, 5, 1)]
    states = [prefilled(model, p)[0] for p in prompts]
    batch = DecodeBatch(model, serving_copy(model, None), rows=6)
    for st in states:
        batch.join(st, 0)
    reference = merge_states(model, states)
    for step in range(30):  # past the GPT's 24-slot window: rows slide as the dynamic path does
        nxt = torch.tensor(ids(len(prompts), seed=100 + step))
        batch.tokens[: batch.n] = nxt
        got = batch.step()
        want, reference = model(nxt[:, None], reference)
        torch.testing.assert_close(got, want[:, -1], atol=ATOL, rtol=0)
    assert [batch.state(r).length for r in range(4)] == [len(p) + 30 for p in prompts]


@torch.inference_mode()
def test_full_window_step_equals_the_trimmed_one(model: LanguageModel) -> None:
    """What a CUDA graph runs (every slot, masked) equals the CPU step (slots in use)."""
    decoder = serving_copy(model, None)
    a, b = DecodeBatch(model, decoder, rows=3), DecodeBatch(model, decoder, rows=3)
    for batch in (a, b):
        for n in (4, 2):
            batch.join(prefilled(model, ids(n, seed=n))[0], 5)
    tokens = torch.tensor([7, 11])
    positions = torch.tensor(a.slots.lengths[:2])
    trimmed = decoder.decode_step(a.slots, tokens, positions, 64)
    full = decoder.decode_step(b.slots, tokens, positions, None)
    torch.testing.assert_close(trimmed, full, atol=ATOL, rtol=0)


@torch.inference_mode()
def test_leaving_rows_never_disturbs_the_others(model: LanguageModel) -> None:
    prompts = [ids(n, seed=10 + n) for n in (2, 6, 4, 7, 3)]
    states = [prefilled(model, p)[0] for p in prompts]
    batch = DecodeBatch(model, serving_copy(model, None), rows=5)
    for st in states:
        batch.join(st, 1)
    order = list(range(5))  # which conversation sits in each row
    for leaving in (1, 0):  # a middle row, then the first: the last row moves in each time
        moved_from = batch.leave(leaving)
        if moved_from is not None:
            order[leaving] = order[moved_from]
        order.pop()
    batch.tokens[: batch.n] = 3
    got = batch.step()
    want, _ = model(torch.full((3, 1), 3), merge_states(model, [states[c] for c in order]))
    torch.testing.assert_close(got, want[:, -1], atol=ATOL, rtol=0)


@torch.inference_mode()
def test_ragged_prefill_equals_one_prompt_at_a_time(model: LanguageModel) -> None:
    cached = prefilled(model, ids(5, seed=1))[0]
    chunks = [ids(7, seed=2), ids(3, seed=3), ids(1, seed=4)]
    starts = [cached, None, cached]
    batch = PrefillBatch(model, serving_copy(model, None), rows=4)
    for st in starts:
        batch.join(st)
    got = batch.feed(chunks)
    for r, (st, chunk) in enumerate(zip(starts, chunks, strict=True)):
        want, _ = model(torch.tensor([chunk]), merge_states(model, [st]))
        torch.testing.assert_close(got[r], want[0, -1], atol=ATOL, rtol=0)
        assert batch.state(r).length == (0 if st is None else st.length) + len(chunk)


@torch.inference_mode()
def test_state_moves_from_prefill_to_decode_intact(model: LanguageModel) -> None:
    decoder = serving_copy(model, None)
    prefill, decode = PrefillBatch(model, decoder, 2), DecodeBatch(model, decoder, 2)
    prompt = ids(8, seed=5)
    prefill.join(None)
    prefill.feed([prompt])
    decode.join(prefill.raw_state(0), 9)
    prefill.leave(0)
    got = decode.step()
    want, _ = model(torch.tensor([[*prompt, 9]]), None)
    torch.testing.assert_close(got[0], want[0, -1], atol=ATOL, rtol=0)


@torch.inference_mode()
def test_bf16_serving_stays_close_and_hands_back_model_dtype_states(model: LanguageModel) -> None:
    prompt = ids(6, seed=6)
    st, _ = prefilled(model, prompt)
    batch = DecodeBatch(model, serving_copy(model, torch.bfloat16), rows=2)
    batch.join(st, 4)
    got = batch.step()
    want, _ = model(torch.tensor([[4]]), merge_states(model, [st]))
    assert got.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: logits agree to a few percent of their spread.
    assert (got[0] - want[0, -1]).abs().max() < 0.05 * want.std()
    saved = batch.state(0)
    assert all(t.dtype in (model.dtype, torch.long) for t in saved.to_tensors().values())


def test_graph_buckets_cover_every_batch_size() -> None:
    assert graph_buckets(1) == [1]
    assert graph_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert graph_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    for n in range(1, 49):
        assert any(b >= n for b in graph_buckets(48))


@torch.inference_mode()
def test_cuda_graphs_are_only_a_cuda_thing(model: LanguageModel) -> None:
    batch = DecodeBatch(model, serving_copy(model, None), rows=2, cuda_graphs=True)
    assert (batch._graphs is None) == (model.device.type == "cpu")  # on CPU a flag, no more
    batch.join(None, 1)
    assert batch.step().shape == (1, V)


@torch.inference_mode()
def test_cuda_graph_replay_equals_the_eager_step(model: LanguageModel) -> None:
    if model.device.type != "cuda":
        pytest.skip("needs a CUDA device")
    prompts = [ids(n, seed=n) for n in (3, 7, 5)]
    states = [prefilled(model, p)[0] for p in prompts]
    graphed = DecodeBatch(model, serving_copy(model, None), rows=8, cuda_graphs=True)
    eager = DecodeBatch(model, serving_copy(model, None), rows=8)
    for batch in (graphed, eager):
        for st in states:
            batch.join(st, 2)
    for step in range(5):
        nxt = torch.tensor(ids(3, seed=step), device="cuda")
        graphed.tokens[:3] = nxt
        eager.tokens[:3] = nxt
        torch.testing.assert_close(graphed.step(), eager.step(), atol=1e-4, rtol=0)
