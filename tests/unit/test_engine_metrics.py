"""The engine's Prometheus metrics: vLLM's names, one registry per engine or shared, recorded
by the scheduler as it serves."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from bot.settings import EngineSettings, SamplingSettings
from bot.wire import Sampling, Turn
from engine.serve.metrics import EngineMetrics
from engine.serve.scheduler import Scheduler
from tests.unit.engine_fixtures import tiny_checkpoint
from tests.unit.test_scheduler import make_work, replies, run_all

VLLM_NAMES = [
    "vllm:time_to_first_token_seconds",
    "vllm:time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:prefix_cache_hits",
    "vllm:prefix_cache_queries",
    "vllm:generation_tokens",
    "vllm:prompt_tokens",
    "parley:cache_bytes",
]


def value(registry: CollectorRegistry, name: str, model: str = "m", **labels: str) -> float:
    got = registry.get_sample_value(name, {"model_name": model, **labels})
    return 0.0 if got is None else got


def test_families_have_vllm_names_and_a_model_name_label() -> None:
    registry = CollectorRegistry()
    EngineMetrics("m", registry)
    families = {m.name: m for m in registry.collect()}
    for name in VLLM_NAMES:
        assert name in families, name
    assert families["vllm:time_to_first_token_seconds"].type == "histogram"
    assert families["vllm:num_requests_running"].type == "gauge"
    assert families["vllm:generation_tokens"].type == "counter"


def test_two_engines_share_a_registry_and_add_up() -> None:
    registry = CollectorRegistry()
    a, b, other = (
        EngineMetrics("m", registry),
        EngineMetrics("m", registry),
        EngineMetrics("x", registry),
    )
    a.set_load(running=3, waiting=1, cache_bytes=100)
    b.set_load(running=2, waiting=0, cache_bytes=50)
    other.set_load(running=7, waiting=0, cache_bytes=0)
    a.generated(10)
    b.generated(5)
    assert value(registry, "vllm:num_requests_running") == 5
    assert value(registry, "parley:cache_bytes") == 150
    assert value(registry, "vllm:generation_tokens_total") == 15
    assert value(registry, "vllm:num_requests_running", "x") == 7
    a.set_load(running=1, waiting=0, cache_bytes=0)  # moves by the difference only
    b.close()
    assert value(registry, "vllm:num_requests_running") == 1
    assert value(registry, "vllm:num_requests_waiting") == 0


def test_scheduler_records_requests_tokens_and_cache(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "gru", "gru")
    registry = CollectorRegistry()
    s = Scheduler(
        ckpt,
        EngineSettings(stream_interval_ms=0, prefill_chunk_tokens=16),
        SamplingSettings(),
        ckpt.model.device,
        metrics=EngineMetrics("m", registry),
        ignore_eot=True,
    )
    sampling = Sampling(temperature=0.0, max_new_tokens=6)
    first = make_work("c", "hello", sampling=sampling)
    reply = replies(run_all(s, [first]))[first.request.id]
    follow = make_work(
        "c", "and you?", (Turn("user", "hello"), Turn("bot", reply)), sampling=sampling
    )
    run_all(s, [follow])
    assert value(registry, "vllm:request_success_total", finished_reason="length") == 2
    assert value(registry, "vllm:generation_tokens_total") == 12  # end-of-turn is banned
    assert value(registry, "vllm:time_to_first_token_seconds_count") == 2
    assert value(registry, "vllm:e2e_request_latency_seconds_count") == 2
    assert value(registry, "vllm:time_per_output_token_seconds_count") == 2
    prompt = value(registry, "vllm:prompt_tokens_total")
    hits, queries = (value(registry, f"vllm:prefix_cache_{k}_total") for k in ("hits", "queries"))
    assert 0 < hits < queries == prompt + hits  # the follow-up continued the cached state
    assert value(registry, "parley:cache_bytes") > 0
    assert value(registry, "vllm:num_requests_running") == 0
