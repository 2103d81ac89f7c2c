"""Prometheus metrics of the adapters: requests, their latency, what is in flight, replies.

Metrics are process-wide by nature (one ``/metrics`` page per process, which in ``parley run``
also shows the engine's), so :func:`adapter_metrics` registers one set per registry and hands
the same set to every caller; a second web app in the same process (tests) reuses it instead of
failing on a duplicate name. Every series carries the ``adapter`` label (the adapter instance
id), so several adapters in one process stay apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from threading import Lock
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
"""Request latency buckets: static pages in milliseconds, whole streamed replies in seconds."""


@dataclass(frozen=True)
class AdapterMetrics:
    """The metric families adapters record into."""

    requests: Counter
    """``parley_adapter_requests_total{adapter, route, status}``"""
    latency: Histogram
    """``parley_adapter_request_seconds{adapter, route}``: until the last byte was sent."""
    in_flight: Gauge
    """``parley_adapter_requests_in_flight{adapter}``"""
    replies: Counter
    """``parley_adapter_replies_total{adapter, outcome}``: ``done`` or the final error's code
    (``busy``; ``unavailable``, which includes no reply in time; ``bad_request``; ``internal``)."""
    blocked: Counter
    """``parley_adapter_replies_filtered_total{adapter, reason}``: replies the safety filter
    blocked (reason ``blocklist`` or ``classifier``; under ``regenerate``, each blocked attempt)."""
    regenerated: Counter
    """``parley_adapter_replies_regenerated_total{adapter}``: new replies asked for because the
    safety filter blocked one (its ``regenerate`` action)."""
    regenerate_fallbacks: Counter
    """``parley_adapter_regenerate_fallbacks_total{adapter, reason}``: replies that became the
    replacement after regenerating: every new reply was ``blocked`` too, or asking ``failed``."""

    @classmethod
    def register(cls, registry: CollectorRegistry) -> AdapterMetrics:
        return cls(
            requests=Counter(
                "parley_adapter_requests_total",
                "Requests an adapter answered, by route and status.",
                ("adapter", "route", "status"),
                registry=registry,
            ),
            latency=Histogram(
                "parley_adapter_request_seconds",
                "Time from request to the last byte of the response.",
                ("adapter", "route"),
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            ),
            in_flight=Gauge(
                "parley_adapter_requests_in_flight",
                "Requests an adapter is answering now.",
                ("adapter",),
                registry=registry,
                multiprocess_mode="livesum",
            ),
            replies=Counter(
                "parley_adapter_replies_total",
                "Model replies an adapter received, by outcome.",
                ("adapter", "outcome"),
                registry=registry,
            ),
            blocked=Counter(
                "parley_adapter_replies_filtered_total",
                "Replies the safety filter blocked, by reason.",
                ("adapter", "reason"),
                registry=registry,
            ),
            regenerated=Counter(
                "parley_adapter_replies_regenerated_total",
                "New replies asked for because the safety filter blocked one.",
                ("adapter",),
                registry=registry,
            ),
            regenerate_fallbacks=Counter(
                "parley_adapter_regenerate_fallbacks_total",
                "Replies that became the safety replacement after regenerating, by reason.",
                ("adapter", "reason"),
                registry=registry,
            ),
        )


M = TypeVar("M")

_registered: dict[tuple[type[Any], int], tuple[CollectorRegistry, Any]] = {}
_lock = Lock()


def registered_once(
    kind: type[M], register: Callable[[CollectorRegistry], M], registry: CollectorRegistry
) -> M:
    """The ``kind`` metric set of ``registry``, made by ``register`` the first time only, so a
    second adapter or app in one process (tests) reuses it instead of failing on a duplicate
    metric name."""
    with _lock:
        entry = _registered.get((kind, id(registry)))
        if entry is None or entry[0] is not registry:
            entry = (registry, register(registry))
            _registered[(kind, id(registry))] = entry
        metrics: M = entry[1]
        return metrics


def adapter_metrics(registry: CollectorRegistry = REGISTRY) -> AdapterMetrics:
    """The adapter metrics of ``registry`` (the process default unless given), registered once."""
    return registered_once(AdapterMetrics, AdapterMetrics.register, registry)
