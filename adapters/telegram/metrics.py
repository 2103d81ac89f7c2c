"""Prometheus metrics of the Telegram adapter, beside the shared ones of :mod:`adapters.metrics`.

Registered once per registry (as :func:`adapters.metrics.adapter_metrics` does), every series
labelled with the adapter instance id.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from adapters.metrics import registered_once


@dataclass(frozen=True)
class TelegramMetrics:
    updates: Counter
    """``parley_telegram_updates_total{adapter, kind, action}``: chat, command, note, ignore."""
    sent: Counter
    """``parley_telegram_messages_sent_total{adapter}``"""
    edits: Counter
    """``parley_telegram_edits_total{adapter}``"""
    retry_after: Counter
    """``parley_telegram_retry_after_total{adapter}``: 429 answers honoured."""
    errors: Counter
    """``parley_telegram_api_errors_total{adapter, error}``: failed Bot API calls by kind
    (``network``, ``uncertain``: a send that may have been done and is not repeated,
    ``too_long``, ``gone``, ``forbidden``, ``bad_request``, ``other``)."""

    @classmethod
    def register(cls, registry: CollectorRegistry) -> TelegramMetrics:
        return cls(
            updates=Counter(
                "parley_telegram_updates_total",
                "Telegram updates received, by kind and what the adapter did.",
                ("adapter", "kind", "action"),
                registry=registry,
            ),
            sent=Counter(
                "parley_telegram_messages_sent_total",
                "Messages the bot sent.",
                ("adapter",),
                registry=registry,
            ),
            edits=Counter(
                "parley_telegram_edits_total",
                "Edits of streamed replies.",
                ("adapter",),
                registry=registry,
            ),
            retry_after=Counter(
                "parley_telegram_retry_after_total",
                "Bot API calls answered 429 (RetryAfter) and retried after the wait.",
                ("adapter",),
                registry=registry,
            ),
            errors=Counter(
                "parley_telegram_api_errors_total",
                "Bot API calls that failed, by kind.",
                ("adapter", "error"),
                registry=registry,
            ),
        )


def telegram_metrics(registry: CollectorRegistry = REGISTRY) -> TelegramMetrics:
    """The Telegram metrics of ``registry`` (the process default unless given), registered once."""
    return registered_once(TelegramMetrics, TelegramMetrics.register, registry)
