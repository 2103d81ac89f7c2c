"""Load, scaled down from ``bench/soak.py`` (200 users for 60 s there): users chatting at once
through the OpenAI API (official ``openai`` client) and the chat page, against a real Redis,
a real ``parley engine`` and a real ``parley adapter web`` process. Nothing is lost, nothing
is answered twice (checked by what each user saw and against the engine's conversation log);
past capacity, the users get "busy" answers at once and memory stays bounded."""

from __future__ import annotations

import shutil

import pytest

from bench.soak import Limits, soak

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


def test_users_chatting_at_once_lose_nothing_and_get_nothing_twice() -> None:
    figures = soak(users=16, duration_s=6.0)
    assert figures["answered"] > 16, figures  # every user was answered, most more than once
    assert figures["lost"] == 0, figures
    assert figures["duplicated"] == 0, figures
    assert figures["busy_replies"] == 0, figures  # below capacity nobody is turned away


def test_past_capacity_users_are_told_busy_and_memory_stays_bounded() -> None:
    tight = Limits(max_batch=1, max_waiting=1, max_stream_len=10, max_new_tokens=400)
    figures = soak(users=24, duration_s=6.0, limits=tight)
    assert figures["busy_replies"] > 0, figures  # backpressure engaged
    assert figures["answered"] > 0, figures  # and the system kept answering
    assert figures["lost"] == 0, figures
    assert figures["duplicated"] == 0, figures
    assert figures["peak_redis_mb"] < 64, figures
    assert figures["peak_rss_mb"] < 2048, figures
