"""The engine's Prometheus metrics, under vLLM's names so existing dashboards fit.

Histograms (observed once per finished request, never per token)::

    vllm:time_to_first_token_seconds      from admission to the first sampled token
    vllm:time_per_output_token_seconds    the request's mean gap between output tokens
    vllm:e2e_request_latency_seconds      from the worker reading it to its last token
    vllm:request_queue_time_seconds       from the worker reading it to its admission

Gauges ``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` and the context cache's
``parley:cache_bytes``; counters ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``
(incremented once per step by the number of rows), ``vllm:prefix_cache_queries_total`` and
``vllm:prefix_cache_hits_total`` (in tokens, as vLLM counts them: a request's prompt is
queried in full, and the tokens its cached conversation state already covers are hits),
``vllm:request_success_total{finished_reason}``. Every series has a ``model_name`` label.

Metric families are registered once per :class:`CollectorRegistry` (the process default in
production) and shared by every engine in that process; gauges move by increments, not
``set``, so two engines with one model name add up instead of overwriting each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from threading import Lock

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
)
TPOT_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
)
REQUEST_BUCKETS_S = (
    0.01,
    0.05,
    0.1,
    0.3,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    60.0,
    120.0,
)

_LABEL = ("model_name",)


@dataclass(frozen=True)
class _Families:
    ttft: Histogram
    tpot: Histogram
    e2e: Histogram
    queue: Histogram
    running: Gauge
    waiting: Gauge
    cache_bytes: Gauge
    prompt_tokens: Counter
    generation_tokens: Counter
    cache_queries: Counter
    cache_hits: Counter
    success: Counter
    replies: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> _Families:
        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, _LABEL, buckets=buckets, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, _LABEL, registry=registry, multiprocess_mode="livesum")

        def counter(name: str, doc: str, labels: tuple[str, ...] = _LABEL) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        return cls(
            ttft=histogram(
                "vllm:time_to_first_token_seconds",
                "Time to first token in seconds.",
                TTFT_BUCKETS_S,
            ),
            tpot=histogram(
                "vllm:time_per_output_token_seconds",
                "Mean time per output token of a request, in seconds.",
                TPOT_BUCKETS_S,
            ),
            e2e=histogram(
                "vllm:e2e_request_latency_seconds",
                "End-to-end request latency in seconds.",
                REQUEST_BUCKETS_S,
            ),
            queue=histogram(
                "vllm:request_queue_time_seconds",
                "Time a request waited before it was scheduled, in seconds.",
                REQUEST_BUCKETS_S,
            ),
            running=gauge("vllm:num_requests_running", "Requests being prefilled or decoded."),
            waiting=gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled."),
            cache_bytes=gauge("parley:cache_bytes", "Bytes of model state in the context cache."),
            prompt_tokens=counter("vllm:prompt_tokens", "Prompt tokens prefilled."),
            generation_tokens=counter("vllm:generation_tokens", "Tokens generated."),
            cache_queries=counter(
                "vllm:prefix_cache_queries", "Requests that looked for cached conversation state."
            ),
            cache_hits=counter(
                "vllm:prefix_cache_hits", "Requests that continued from cached conversation state."
            ),
            success=counter(
                "vllm:request_success",
                "Requests finished, by finish reason.",
                ("model_name", "finished_reason"),
            ),
            replies=counter(
                "parley:replies",
                "Replies sent, by source: generated, or remembered ([reply] mode).",
                ("model_name", "source"),
            ),
        )


_registered: dict[int, tuple[CollectorRegistry, _Families]] = {}
_lock = Lock()


def _families(registry: CollectorRegistry) -> _Families:
    with _lock:
        entry = _registered.get(id(registry))
        if entry is None or entry[0] is not registry:
            entry = (registry, _Families.register(registry))
            _registered[id(registry)] = entry
        return entry[1]


class EngineMetrics:
    """One engine's handle on the metric families, bound to its ``model_name`` label."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None) -> None:
        f = _families(registry if registry is not None else REGISTRY)
        self.model_name = model_name
        self._f = f
        self._ttft = f.ttft.labels(model_name)
        self._tpot = f.tpot.labels(model_name)
        self._e2e = f.e2e.labels(model_name)
        self._queue = f.queue.labels(model_name)
        self._running = f.running.labels(model_name)
        self._waiting = f.waiting.labels(model_name)
        self._cache_bytes = f.cache_bytes.labels(model_name)
        self._prompt_tokens = f.prompt_tokens.labels(model_name)
        self._generation_tokens = f.generation_tokens.labels(model_name)
        self._cache_queries = f.cache_queries.labels(model_name)
        self._cache_hits = f.cache_hits.labels(model_name)
        self._load = (0, 0, 0)  # what this engine added to the gauges so far

    def set_load(self, running: int, waiting: int, cache_bytes: int) -> None:
        """This engine's current load (moves the shared gauges by the difference)."""
        last_running, last_waiting, last_bytes = self._load
        if running != last_running:
            self._running.inc(running - last_running)
        if waiting != last_waiting:
            self._waiting.inc(waiting - last_waiting)
        if cache_bytes != last_bytes:
            self._cache_bytes.inc(cache_bytes - last_bytes)
        self._load = (running, waiting, cache_bytes)

    def close(self) -> None:
        """Take this engine's load off the gauges (it stopped)."""
        self.set_load(0, 0, 0)

    def queued(self, queue_s: float) -> None:
        self._queue.observe(queue_s)

    def cache_query_tokens(self, hit: int, computed: int) -> None:
        """A request's prompt: ``hit`` tokens continued from cached state, ``computed`` fed."""
        self._cache_queries.inc(hit + computed)
        if hit:
            self._cache_hits.inc(hit)

    def prompt(self, tokens: int) -> None:
        self._prompt_tokens.inc(tokens)

    def generated(self, tokens: int) -> None:
        self._generation_tokens.inc(tokens)

    def finished(
        self, reason: str, ttft_s: float, e2e_s: float, output_tokens: int, decode_s: float
    ) -> None:
        """A request ended; ``decode_s`` is the time from its first token to its last."""
        self._ttft.observe(ttft_s)
        self._e2e.observe(e2e_s)
        if output_tokens > 1:
            self._tpot.observe(decode_s / (output_tokens - 1))
        self._f.success.labels(self.model_name, reason).inc()

    def replied(self, source: str) -> None:
        """A reply was sent: ``generated`` or ``remembered``."""
        self._f.replies.labels(self.model_name, source).inc()
