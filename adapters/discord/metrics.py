"""Prometheus metrics of the Discord adapter, registered once per registry.

They sit beside the shared adapter metrics (:mod:`adapters.metrics`, which count reply
outcomes) and follow the same conventions: ``parley_`` names, an ``adapter`` label (the
adapter instance id), one set per registry handed to every caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from adapters.metrics import registered_once


@dataclass(frozen=True)
class DiscordMetrics:
    """The Discord adapter's metric families."""

    messages: Counter
    """``parley_discord_messages_total{adapter, reason}``: messages the bot answers, by why
    (dm, mention, reply, thread, channel, random, command)."""
    sent: Counter
    """``parley_discord_sent_total{adapter}``: messages the bot posted (replies and notices)."""
    edits: Counter
    """``parley_discord_edits_total{adapter}``: edits of streaming replies."""
    rate_limited: Counter
    """``parley_discord_http_429_total{adapter}``: 429 answers from Discord's REST API (the
    library waits and retries them)."""
    throttled: Counter
    """``parley_discord_throttled_total{adapter}``: messages refused by the per-user limit."""
    errors: Counter
    """``parley_discord_errors_total{adapter, kind}``: failures by kind: ``discord`` (Discord
    refused a request, e.g. no permission to post), ``queue`` (Redis trouble; the user got a
    short notice), ``handler`` (anything else; logged with its traceback)."""

    @classmethod
    def register(cls, registry: CollectorRegistry) -> DiscordMetrics:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, ("adapter", *labels), registry=registry)

        return cls(
            messages=counter(
                "parley_discord_messages_total", "Messages the bot answers, by why.", "reason"
            ),
            sent=counter("parley_discord_sent_total", "Messages the bot posted."),
            edits=counter("parley_discord_edits_total", "Edits of streaming replies."),
            rate_limited=counter(
                "parley_discord_http_429_total", "429 answers from Discord's REST API."
            ),
            throttled=counter(
                "parley_discord_throttled_total", "Messages refused by the per-user rate limit."
            ),
            errors=counter("parley_discord_errors_total", "Discord adapter failures.", "kind"),
        )


def discord_metrics(registry: CollectorRegistry = REGISTRY) -> DiscordMetrics:
    """The Discord metrics of ``registry`` (the process default unless given), registered once."""
    return registered_once(DiscordMetrics, DiscordMetrics.register, registry)
