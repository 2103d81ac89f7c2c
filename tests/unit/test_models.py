"""Both architectures honour the one model interface: batching, caching, state round trips."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from bot.errors import ModelError
from engine.models import PRESETS, LanguageModel, ModelConfig, build_model, preset_config
from engine.models.transformer import GPT
from tests.unit.state_reference import empty_state, merge_states, split_state

V = 40
TINY = {
    "gru": ModelConfig(arch="gru", vocab_size=V, n_embd=16, n_hidden=32, n_layer=2),
    "gpt": ModelConfig(
        arch="gpt", vocab_size=V, n_embd=32, n_layer=2, n_head=4, block_size=48, attn_sinks=2
    ),
}
ATOL = 1e-5


def sharpened(model: LanguageModel) -> LanguageModel:
    """Larger weights than a fresh init, so attention is peaked and a wrong mask, position or
    cached key visibly changes the logits (at init, attention is nearly uniform)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(params=sorted(TINY))
def model(request: pytest.FixtureRequest) -> LanguageModel:
    torch.manual_seed(0)
    return sharpened(build_model(TINY[request.param]))


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def greedy(
    model: LanguageModel, prompt: torch.Tensor, steps: int
) -> tuple[list[int], torch.Tensor]:
    """Unbatched reference: prefill one row, then feed back the argmax.

    -> (the generated ids, the last-position logits of every step (steps, V))."""
    logits, state = model(prompt[None], None)
    out, seen = [], []
    for _ in range(steps):
        nxt = logits[:, -1].argmax(-1)  # (1,)
        out.append(int(nxt))
        logits, state = model(nxt[:, None], state)
        seen.append(logits[0, -1])
    return out, torch.stack(seen)


@torch.no_grad()
def test_training_path_shapes_and_backward(model: LanguageModel) -> None:
    model.train()
    with torch.enable_grad():
        logits, _ = model(tokens(3, 10), None)
        assert logits.shape == (3, 10, V)
        logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@torch.no_grad()
def test_step_from_cached_state_equals_full_recompute(model: LanguageModel) -> None:
    seq = tokens(2, 13)
    _, state = model(seq[:, :12], None)
    step, _ = model(seq[:, 12:], state)
    full, _ = model(seq, None)
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 7])
@torch.no_grad()
def test_chunked_prefill_equals_one_shot(model: LanguageModel, chunk: int) -> None:
    seq = tokens(2, 20)
    one_shot, _ = model(seq, empty_state(model, 2))
    state, pieces = empty_state(model, 2), []
    for start in range(0, 20, chunk):
        logits, state = model(seq[:, start : start + chunk], state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), one_shot, atol=ATOL, rtol=0)
    fast, _ = model(seq, None)  # the training path agrees with the cached one
    torch.testing.assert_close(fast, one_shot, atol=ATOL, rtol=0)


@torch.no_grad()
def test_last_only_is_the_last_position(model: LanguageModel) -> None:
    seq = tokens(2, 9)
    full, _ = model(seq, None)
    last, _ = model(seq, None, last_only=True)
    assert last.shape == (2, 1, V)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_batched_greedy_equals_unbatched_for_ragged_prompts(model: LanguageModel) -> None:
    prompts = [tokens(1, n, seed=n)[0] for n in (3, 11, 6)]
    steps = 8
    expected, expected_logits = zip(*(greedy(model, p, steps) for p in prompts), strict=True)

    # Continuous batching: each conversation prefilled alone, then decoded together.
    seqs, first = [], []
    for p in prompts:
        logits, state = model(p[None], None)
        seqs += split_state(model, state)
        first.append(logits[:, -1])
    state = merge_states(model, seqs)
    nxt = torch.cat(first).argmax(-1)  # (B,)
    got: list[list[int]] = [[] for _ in prompts]
    got_logits = []
    for _ in range(steps):
        for row, t in zip(got, nxt.tolist(), strict=True):
            row.append(t)
        logits, state = model(nxt[:, None], state)
        got_logits.append(logits[:, -1])
        nxt = logits[:, -1].argmax(-1)
    assert got == list(expected)
    torch.testing.assert_close(
        torch.stack(got_logits, 1), torch.stack(expected_logits), atol=ATOL, rtol=0
    )
    assert [s.length for s in split_state(model, state)] == [len(p) + steps for p in prompts]


@torch.no_grad()
def test_fresh_row_in_a_merged_batch_equals_a_fresh_start(model: LanguageModel) -> None:
    prompt, follow_up = tokens(1, 5), tokens(1, 5, seed=6)
    _, old = model(tokens(1, 9, seed=5), None)
    history = split_state(model, old)[0]
    batched, _ = model(torch.cat([follow_up, prompt]), merge_states(model, [history, None]))
    fresh, _ = model(prompt, None)
    continued, _ = model(follow_up, merge_states(model, [history]))
    torch.testing.assert_close(batched, torch.cat([continued, fresh]), atol=ATOL, rtol=0)


@torch.no_grad()
def test_split_merge_round_trip(model: LanguageModel) -> None:
    _, state = model(tokens(3, 7), None)
    seqs = split_state(model, state)
    assert [s.length for s in seqs] == [7, 7, 7]
    assert all(s.nbytes > 0 for s in seqs)
    nxt = tokens(3, 1, seed=7)
    want, _ = model(nxt, state)
    got, _ = model(nxt, merge_states(model, seqs))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@torch.no_grad()
def test_split_states_are_independent_of_the_batch(model: LanguageModel) -> None:
    _, state = model(tokens(2, 6), None)
    seqs = split_state(model, state)
    before = {k: t.clone() for k, t in seqs[0].to_tensors().items()}
    model(tokens(2, 4, seed=8), merge_states(model, seqs))  # writes into the batch buffers
    for k, t in seqs[0].to_tensors().items():
        assert torch.equal(t, before[k]), "a later step changed a cached conversation state"


@torch.no_grad()
def test_state_tensors_round_trip_through_safetensors(model: LanguageModel) -> None:
    _, state = model(tokens(2, 8), None)
    seqs = split_state(model, state)
    blob = st_save(seqs[1].to_tensors())  # what the engine spills to Redis
    restored = model.state_from_tensors(st_load(blob))
    assert restored.length == seqs[1].length and restored.nbytes == seqs[1].nbytes
    nxt = tokens(1, 1, seed=9)
    want, _ = model(nxt, merge_states(model, [seqs[1]]))
    got, _ = model(nxt, merge_states(model, [restored]))
    assert torch.equal(got, want)


def test_state_from_foreign_tensors_raises(model: LanguageModel) -> None:
    with pytest.raises(ModelError):
        model.state_from_tensors({"hidden": torch.zeros(9, 9), "length": torch.tensor([1])})
    with pytest.raises(ModelError):
        model.state_from_tensors({"k": torch.zeros(1, 2, 3, 4), "length": torch.tensor([1])})


def test_params_and_flops(model: LanguageModel) -> None:
    n = model.num_params()
    assert n == sum(p.numel() for p in model.parameters())
    assert model.flops_per_token() >= 6 * (n - V * model.config.n_embd)


# -------------------------------------------------------------------- GPT's sliding window


def tiny_gpt(n_layer: int) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="gpt", vocab_size=V, n_embd=32, n_layer=n_layer, n_head=4, block_size=16, attn_sinks=2
    )
    model = sharpened(build_model(cfg))
    assert isinstance(model, GPT)
    return model


@torch.no_grad()
def test_gpt_window_keeps_sinks_and_recent_tokens() -> None:
    # With one layer a cached key depends only on its token and position, so after the window
    # slides the cache must equal a fresh prefill of (sink tokens + most recent tokens).
    model, sinks = tiny_gpt(n_layer=1), 2
    seq = tokens(1, 40)
    state = empty_state(model, 1)
    for start in range(0, 40, 3):
        logits, state = model(seq[:, start : start + 3], state)
    assert model.max_context == 16
    kept = state.lengths[0]
    assert kept <= 16 and state.consumed == [40]
    window = torch.cat([seq[:, :sinks], seq[:, 40 - (kept - sinks) :]], dim=1)
    fresh, _ = model(window, None)
    torch.testing.assert_close(logits[:, -1], fresh[:, -1], atol=1e-4, rtol=0)


@torch.no_grad()
def test_gpt_never_attends_to_padding_slots() -> None:
    model = tiny_gpt(n_layer=2)
    _, a = model(tokens(1, 12), None)
    _, b = model(tokens(1, 3, seed=2), None)
    state = merge_states(model, split_state(model, a) + split_state(model, b))
    nxt = tokens(2, 1, seed=3)
    want, _ = model(nxt, merge_states(model, split_state(model, state)))
    for layer in state.k + state.v:  # garbage past row 1's end, where right-padding lives
        layer[1, :, 3:] = 1e3 * torch.randn_like(layer[1, :, 3:])
    got, _ = model(nxt, state)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@torch.no_grad()
def test_gpt_decodes_past_block_size_in_a_ragged_batch() -> None:
    model = tiny_gpt(n_layer=2)
    _, a = model(tokens(1, 15), None)
    _, b = model(tokens(1, 2, seed=2), None)
    state = merge_states(model, split_state(model, a) + split_state(model, b) + [None])
    nxt = tokens(3, 1, seed=3)
    for _ in range(30):
        logits, state = model(nxt, state)
        assert torch.isfinite(logits).all()
        assert max(state.lengths) <= model.max_context
        nxt = logits[:, -1].argmax(-1, keepdim=True)
    assert state.consumed == [45, 32, 30]
    long_prompt, state = model(tokens(2, 50), None)  # longer than the window in one call
    assert long_prompt.shape == (2, 50, V) and max(state.lengths) <= 16


# ----------------------------------------------------------------------------- configs


def test_presets_are_valid_and_round_trip() -> None:
    grus, gpts = (
        ("seed", "gru-small", "gru", "gru-large"),
        ("gpt-tiny", "gpt-small", "gpt", "gpt-base"),
    )
    assert set(PRESETS) == {*grus, *gpts}
    for name in PRESETS:
        cfg = preset_config(name, vocab_size=100)
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert preset_config("default", 100) == PRESETS["gpt"].with_vocab(100)
    seed = PRESETS["seed"]
    assert (seed.arch, seed.n_embd, seed.n_hidden, seed.n_layer) == ("gru", 256, 1024, 1)
    assert build_model(preset_config("gpt-tiny", 100)).num_params() > 0


def test_bad_configs_raise_model_error() -> None:
    with pytest.raises(ModelError):
        preset_config("nope", 10)
    with pytest.raises(ModelError):
        ModelConfig(arch="gpt", vocab_size=10, n_embd=30, n_head=4)
    with pytest.raises(ModelError):
        ModelConfig.from_dict({"arch": "gru", "n_embd": 8, "n_hidden": 8, "colour": "red"})
    with pytest.raises(ModelError):
        build_model(PRESETS["gru-small"])  # no vocab_size yet
