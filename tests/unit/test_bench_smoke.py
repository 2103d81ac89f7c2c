"""The benchmark scripts still run (tiny sizes, CPU): figures are not checked, only that every
key the README quotes is printed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench import gpu as gpu_bench
from bench import report
from bench import serving as serving_bench


@pytest.fixture(autouse=True)
def torch_threads_restored() -> Iterator[None]:
    threads = torch.get_num_threads()  # the benchmarks set them for the whole process
    yield
    torch.set_num_threads(threads)


@pytest.mark.timeout(900)  # every section of the benchmark, shrunk; minutes on a busy machine
def test_serving_bench_quick_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--threads", "1", "--skip", "queue", "e2e"]
    assert serving_bench.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("gru_throughput_ratio", "transformer_throughput_ratio", "followup_ttft_ratio"):
        assert result[key] > 0, key


@pytest.mark.timeout(900)
def test_gpu_bench_runs_its_code_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_bench.main(["--quick", "--cpu-smoke", "--skip", "train"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"gru", "gpt"} <= result["engine"].keys()
    assert all(v["c16_throughput_ratio"] > 0 for v in result["engine"].values())
    assert result["followup"]["gru"]["ratio"] > 0


@pytest.mark.slow
@pytest.mark.timeout(900)  # loads the chitchat corpus, converts for CTranslate2
def test_peers_bench_quick_writes_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("ctranslate2")
    from bench import peers as peers_bench

    assert peers_bench.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "peers-quick.json").read_text()) == result
    assert result["meta"]["commit"] and result["meta"]["machine"]["cores"] >= 1
    a, b = result["workload_a"], result["workload_b"]
    assert {"parley", "transformers", "ctranslate2"} <= a.keys() == b.keys()
    # Every side did the same work: (a) a fixed length per sequence; (b), when the replies
    # end where the human ones did (random weights), the same tokens in all.
    expected_a = result["workload"]["a"]["sequences"] * result["workload"]["a"]["new_tokens"]
    assert {side["tokens"] for side in a.values()} == {expected_a}
    if result["reply_lengths"] == "data":
        assert len({side["tokens"] for side in b.values()}) == 1
    assert all(side["ttft_p99_ms"] >= side["ttft_p50_ms"] > 0 for side in b.values())
    assert result["best_peer_ratio_a"] > 0 and result["best_peer_ratio_b"] > 0
    assert 0 < result["decode_mfu"] < 1

    # bench/report.py turns it into the README's block, leaving the rest of the file alone.
    block = report.render({"peers-cpu": {**result, "quick": False}})
    readme = f"intro\n{report.START}\nold figures\n{report.END}\noutro\n"
    rewritten = report.rewrite(readme, block)
    assert rewritten.startswith("intro\n<!-- bench:start -->") and rewritten.endswith("\noutro\n")
    assert "old figures" not in rewritten
    parley_row = next(line for line in block.splitlines() if line.startswith("| **parley**"))
    assert f"| {a['parley']['tokens_per_s']:,.0f} |" in parley_row
    assert "| side |" not in report.render({"peers-quick": result})  # quick runs are left out


def test_soak_bench_quick_prints_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("openai")
    from bench import soak as soak_bench

    if soak_bench.shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    assert soak_bench.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    keys = ("users", "requests", "lost", "duplicated", "p50_ms", "p99_ms", "busy_replies")
    assert all(key in result for key in (*keys, "peak_rss_mb", "peak_redis_mb"))
    assert result["lost"] == result["duplicated"] == 0 and result["requests"] > 0
    assert json.loads((tmp_path / "soak-quick.json").read_text())["meta"]["commit"]
