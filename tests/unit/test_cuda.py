"""The GPU path as the service runs it: bf16 weights, CUDA graphs, training with autocast.

Every engine test in test_scheduler.py and test_engine_slots.py also runs on a GPU where
there is one; these cover what only exists there. CI has no GPU: the CUDA tests skip, and
the dtype rules are checked on the CPU.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from bot.settings import EngineSettings, SamplingSettings
from engine.checkpoint import load_checkpoint
from engine.hardware import cpu_has_native_bf16
from engine.models.config import PRESETS
from engine.serve.batches import DecodeBatch, fastest, serving_copy, time_decode_steps
from engine.serve.scheduler import Scheduler
from engine.serve.work import Finished
from engine.service import choose_decode_dtype, load_for_serving, weights_dtype
from engine.train import ddp
from engine.train.run import run_training
from tests.unit.engine_fixtures import tiny_checkpoint
from tests.unit.test_scheduler import make_work, replies, run_all
from tests.unit.test_train_helpers import TINY, TINY_PRESET, tiny_config, tiny_options, write_corpus

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_engine_dtype_setting_resolves_per_device(tmp_path: Path) -> None:
    # A GPU loads its serving weights in bf16; a CPU keeps float32 weights.
    assert weights_dtype("auto", CUDA) == torch.bfloat16
    assert weights_dtype("float32", CUDA) == torch.float32
    assert weights_dtype("auto", CPU) is None
    model = tiny_checkpoint(tmp_path / "gru", "gru").model

    def decode(setting: str, device: torch.device) -> torch.dtype | None:
        return choose_decode_dtype(EngineSettings(dtype=setting, max_batch=4), model, device)

    assert decode("auto", CUDA) is None  # the GPU serves from its (bf16) weights
    assert decode("float32", CPU) is None
    assert decode("bfloat16", CPU) == torch.bfloat16


def fixed_timer(ms: dict[torch.dtype, float], asked: list[int]):
    """A decode timer reporting these step times (for the choice alone; timing is measured
    for real in the next test)."""

    def timer(model: object, rows: int, candidates: Sequence[torch.dtype]) -> dict:
        asked.append(rows)
        return {d: ms[d] for d in candidates}

    return timer


@pytest.mark.parametrize("bf16_ms", [1.0, 3.0])
def test_auto_on_a_cpu_serves_bf16_only_where_native_and_faster(
    bf16_ms: float, tmp_path: Path
) -> None:
    model = tiny_checkpoint(tmp_path / "gpt", "gpt").model
    asked: list[int] = []
    timer = fixed_timer({torch.float32: 2.0, torch.bfloat16: bf16_ms}, asked)
    chosen = choose_decode_dtype(EngineSettings(max_batch=4), model, CPU, timer=timer)
    if not cpu_has_native_bf16():  # emulated bf16 is never faster: not even measured
        assert chosen is None and asked == []
    else:  # measured over a full batch, and bf16 taken only when its step is shorter
        assert asked == [4]
        assert chosen == (torch.bfloat16 if bf16_ms < 2.0 else None)


def test_fastest_picks_the_shortest_step() -> None:
    assert fastest({torch.float32: 2.0, torch.bfloat16: 1.0}) == torch.bfloat16
    assert fastest({torch.float32: 1.0, torch.bfloat16: 2.0}) == torch.float32
    assert fastest({torch.float32: 1.0, torch.bfloat16: 1.0}) == torch.float32  # a tie: first


def test_decode_steps_are_timed_per_candidate_on_copies(tmp_path: Path) -> None:
    model = tiny_checkpoint(tmp_path / "gpt", "gpt").model
    times = time_decode_steps(model, 8, [torch.float32, torch.bfloat16], steps=2)
    assert list(times) == [torch.float32, torch.bfloat16]
    assert all(0.0 < t < 60.0 for t in times.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model is untouched


@needs_cuda
@pytest.mark.parametrize("arch", ["gru", "gpt"])
def test_bf16_graphed_service_answers_a_full_batch_close_to_fp32(arch: str, tmp_path: Path) -> None:
    saved = tiny_checkpoint(tmp_path / arch, arch)
    gpu = load_for_serving(tmp_path / arch, CUDA, "auto")
    assert gpu.model.dtype == torch.bfloat16 and gpu.model.device.type == "cuda"
    settings = EngineSettings(max_batch=16, stream_interval_ms=0, prefill_chunk_tokens=16)
    s = Scheduler(gpu, settings, SamplingSettings(), gpu.model.device)
    assert s.cuda_graphs  # the decode step replays captured graphs
    works = [make_work(f"c{i}", f"hello number {i}", rid=f"r{i}") for i in range(24)]
    done = [o for o in run_all(s, list(works)) if isinstance(o, Finished)]
    assert sorted(o.work.request.id for o in done) == sorted(w.request.id for w in works)
    assert all(o.reply.completion_tokens > 0 for o in done)
    # The first reply token's logits in bf16 on the GPU stay within bf16 rounding of fp32.
    prompt = torch.tensor([saved.tokenizer.encode("<|user|>hello there<|eot|><|bot|>")])
    with torch.inference_mode():
        want, _ = saved.model(prompt, None, last_only=True)
        got, _ = gpu.model(prompt.to(CUDA), None, last_only=True)
    err = (got.float().cpu() - want).norm() / want.norm()
    assert err < 2e-2, err


@needs_cuda
@pytest.mark.parametrize("arch", ["gru", "gpt"])
def test_graphed_greedy_replies_equal_the_cpu_in_float32(arch: str, tmp_path: Path) -> None:
    cpu = tiny_checkpoint(tmp_path / "cpu", arch)
    gpu = tiny_checkpoint(tmp_path / "gpu", arch, device="cuda")
    settings = EngineSettings(stream_interval_ms=0, prefill_chunk_tokens=16)
    texts = ["hello", "what did you do this weekend? tell me everything", "你好", "hi"]
    works = [make_work(f"c{i}", t) for i, t in enumerate(texts)]
    got = {
        device: replies(
            run_all(Scheduler(ck, settings, SamplingSettings(), ck.model.device), list(works))
        )
        for device, ck in (("cpu", cpu), ("cuda", gpu))
    }
    assert got["cuda"] == got["cpu"]


@needs_cuda
def test_capture_survives_old_graphs_dying_mid_capture(tmp_path: Path) -> None:
    """A hot swap leaves the old model's graphs as garbage; freeing one while the new model
    captures would invalidate that capture (seen on an H200 before captures paused the GC)."""
    ckpt = tiny_checkpoint(tmp_path / "gru", "gru", device="cuda")
    decoder = serving_copy(ckpt.model, None)
    old = DecodeBatch(ckpt.model, decoder, rows=8, cuda_graphs=True)
    cycle: list[object] = [old]
    cycle.append(cycle)  # garbage that only the collector frees
    del old, cycle
    threshold = gc.get_threshold()
    gc.set_threshold(1)  # collect at nearly every allocation, mid-capture included
    try:
        new = DecodeBatch(ckpt.model, decoder, rows=8, cuda_graphs=True)
    finally:
        gc.set_threshold(*threshold)
    with torch.inference_mode():
        new.join(None, 1)
        assert new.step().shape == (1, ckpt.config.vocab_size)


@needs_cuda
@pytest.mark.parametrize("compile_model", [False, True])
def test_training_on_the_gpu_learns_and_loads_anywhere(
    compile_model: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PRESETS, TINY_PRESET, TINY)
    corpus = write_corpus(tmp_path / "chats.jsonl")
    cfg = tiny_config(compile=compile_model)
    result = run_training(tiny_options(tmp_path, corpus), cfg, ddp.World(0, 1, CUDA))
    val = result.metrics["history"]["val"]
    assert val[-1][1] < val[0][1] - 0.3
    ckpt = load_checkpoint(result.checkpoint, device="cpu")  # trained on a GPU, served anywhere
    assert ckpt.model.device.type == "cpu"
