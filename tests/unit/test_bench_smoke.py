"""The benchmark scripts still run (tiny sizes, CPU): figures are not checked, only that every
key the README quotes is printed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from bench import engine as engine_bench
from bench import gpu as gpu_bench


@pytest.fixture(autouse=True)
def torch_threads_restored() -> Iterator[None]:
    threads = torch.get_num_threads()  # the benchmarks set them for the whole process
    yield
    torch.set_num_threads(threads)


def test_engine_bench_quick_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--threads", "1", "--skip", "queue", "e2e"]
    assert engine_bench.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("gru_throughput_ratio", "transformer_throughput_ratio", "followup_ttft_ratio"):
        assert result[key] > 0, key


def test_gpu_bench_runs_its_code_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_bench.main(["--quick", "--cpu-smoke", "--skip", "train"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"gru", "gpt"} <= result["engine"].keys()
    assert all(v["c16_throughput_ratio"] > 0 for v in result["engine"].values())
    assert result["followup"]["gru"]["ratio"] > 0
