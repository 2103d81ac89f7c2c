"""Readiness and dashboard arithmetic, and the admin token check; no Redis, no network."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr

from adapters.web.admin import TokenRates, check_token, engine_summary
from adapters.web.http import ApiError
from adapters.web.ops import readiness
from bot.engines import Heartbeat
from bot.registry import ModelVersion

NOW = 1_000_000.0


def beat(worker: str, age_s: float = 1.0, model: str = "v1", **fields: float) -> Heartbeat:
    return Heartbeat(worker=worker, time=NOW - age_s, model_version=model, **fields)  # type: ignore[arg-type]


def test_ready_needs_redis_then_a_fresh_engine_then_a_model() -> None:
    assert readiness("Redis did not answer", [beat("a")], NOW)["failed"] == "redis"
    assert readiness(None, [], NOW)["failed"] == "engine"
    assert readiness(None, [beat("a", age_s=10.0)], NOW)["failed"] == "engine"
    assert readiness(None, [beat("a", model="")], NOW)["failed"] == "model"
    report = readiness(None, [beat("a", age_s=9.9), beat("b", age_s=50, model="")], NOW)
    assert report["ready"] is True and report["failed"] is None
    assert report["checks"]["engine"] == "1 alive"


def test_summary_counts_only_live_engines() -> None:
    beats = [
        beat("a", tokens_per_s=10.0, cache_hits=1, cache_queries=4, running=3),
        beat("b", tokens_per_s=5.0, cache_hits=3, cache_queries=4, waiting=2),
        beat("c", age_s=60, tokens_per_s=100.0, cache_hits=0, cache_queries=100),
    ]
    summary = engine_summary(beats, NOW)
    assert summary == {
        "engines_alive": 2,
        "engines_known": 3,
        "tokens_per_s": 15.0,
        "running": 3,
        "waiting": 2,
        "cache_hit_rate": 0.5,
    }
    assert engine_summary([beat("a")], NOW)["cache_hit_rate"] is None


def validation_loss(metrics: dict[str, object]) -> float | None:
    return ModelVersion("v1", Path("v1"), 0.0, metrics=metrics).validation_loss


def test_validation_loss_is_found_under_common_names() -> None:
    assert validation_loss({"val_loss": 1.5, "loss": 9}) == 1.5
    assert validation_loss({"eval_loss": 2}) == 2.0
    assert validation_loss({"val_loss": "n/a", "validation_loss": True}) is None
    assert validation_loss({}) is None


@pytest.mark.parametrize(
    ("token", "header", "status"),
    [
        (None, "Bearer x", 403),
        (SecretStr(""), "Bearer ", 403),
        (SecretStr("s3cret"), None, 401),
        (SecretStr("s3cret"), "Bearer s3cre", 401),
        (SecretStr("s3cret"), "Token s3cret", 401),
        (SecretStr("s3cret"), "Bearer s3cret", None),
    ],
)
def test_check_token(token: SecretStr | None, header: str | None, status: int | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    request = make_mocked_request("GET", "/admin/api/status", headers=headers)
    if status is None:
        check_token(request, token)
        return
    with pytest.raises(ApiError) as caught:
        check_token(request, token)
    assert caught.value.status == status


def test_tokens_per_second_from_running_totals() -> None:
    rates = TokenRates()
    first = Heartbeat(worker="a", time=NOW, tokens_generated=100)
    assert rates.fill([first])[0].tokens_per_s == 0.0  # one sample: no rate yet
    assert rates.fill([first])[0].tokens_per_s == 0.0  # the same heartbeat again
    later = Heartbeat(worker="a", time=NOW + 2, tokens_generated=300)
    assert rates.fill([later])[0].tokens_per_s == 100.0
    assert rates.fill([later])[0].tokens_per_s == 100.0  # kept until the next heartbeat
    reported = Heartbeat(worker="b", time=NOW, tokens_per_s=7.0, tokens_generated=5)
    assert rates.fill([reported])[0].tokens_per_s == 7.0  # the engine's own figure wins
