"""The admin dashboard's API: token auth, status from Redis and the registry, loss plots,
retrain/rollback wiring."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from conftest_web import ADAPTER_ID, add_version, make_settings, tiny_png, write_heartbeat

from adapters.web.admin import RetrainCallback, RollbackCallback
from adapters.web.app import create_app
from bot import keys, wire
from bot.errors import ModelError
from bot.registry import ModelRegistry
from bot.settings import RedisSettings
from bot.wire import JobUpdate

TOKEN = "admin-secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

ClientFactory = Callable[..., Any]


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    models = tmp_path / "data" / "models"
    add_version(models, "v1", {"val_loss": 2.5, "train_loss": 2.4}, plot=True)
    add_version(models, "v2", {"validation_loss": 2.1}, plot=False)
    # v3's plot is a link out of the models directory: never served.
    add_version(models, "v3", {}, plot=False)
    (tmp_path / "secret.png").write_bytes(b"secret")
    (models / "v3" / "loss.png").symlink_to(tmp_path / "secret.png")
    (models / "LIVE").write_text("v2\n")
    return ModelRegistry(models)


@pytest.fixture
async def make_client(
    tmp_path: Path,
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    registry: ModelRegistry,
) -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(
        token: str | None = TOKEN,
        on_retrain: RetrainCallback | None = None,
        on_rollback: RollbackCallback | None = None,
    ) -> TestClient[Any, Any]:
        settings = make_settings(tmp_path, redis_settings, admin_token=token)
        app = create_app(
            settings,
            redis,
            adapter_id=ADAPTER_ID,
            registry=registry,
            on_retrain=on_retrain,
            on_rollback=on_rollback,
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_disabled_without_a_token(make_client: ClientFactory) -> None:
    client = await make_client(token=None)
    info = await (await client.get("/admin/api/info")).json()
    assert info["enabled"] is False and "PARLEY_WEB__ADMIN_TOKEN" in info["message"]
    response = await client.get("/admin/api/status", headers=AUTH)
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "admin_disabled"
    assert (await client.get("/admin")).status == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Bearer"}],
)
async def test_wrong_or_missing_token_is_401(
    make_client: ClientFactory, headers: dict[str, str]
) -> None:
    client = await make_client()
    assert (await (await client.get("/admin/api/info")).json())["enabled"] is True
    for method, path in [
        ("GET", "/admin/api/status"),
        ("GET", "/admin/api/models/v1/loss.png"),
        ("POST", "/admin/api/retrain"),
        ("POST", "/admin/api/rollback"),
    ]:
        response = await client.request(method, path, headers=headers)
        assert response.status == 401, path
        assert (await response.json())["error"]["code"] == "invalid_admin_token"


async def test_status_gathers_everything(make_client: ClientFactory, redis: aioredis.Redis) -> None:
    await redis.set(keys.LIVE_MODEL, "v2")
    progress = JobUpdate(job_id="j1", status="running", step=30, steps=100, loss=2.5)
    await redis.set(keys.TRAIN_PROGRESS, wire.encode(progress))
    for _ in range(3):
        await redis.xadd(keys.request_stream(1), {keys.FIELD: b"x"})
    await write_heartbeat(
        redis, "a", tokens_per_s=100.0, cache_hits=3, cache_queries=4, running=2, waiting=1
    )
    await write_heartbeat(redis, "b", tokens_per_s=50.0, cache_hits=1, cache_queries=4)
    await write_heartbeat(redis, "dead", age_s=60, tokens_per_s=999.0, cache_queries=100)
    client = await make_client()

    response = await client.get("/admin/api/status", headers=AUTH)
    assert response.status == 200
    status = await response.json()
    assert status["live_version"] == "v2"
    versions = {v["version"]: v for v in status["versions"]}
    assert [v["version"] for v in status["versions"]] == ["v3", "v2", "v1", "starter"]
    assert versions["starter"]["builtin"] is True and versions["starter"]["val_loss"] > 0
    assert status["rollback_to"] == "v1"
    assert versions["v1"]["val_loss"] == 2.5 and versions["v1"]["has_loss_plot"] is True
    assert versions["v2"]["val_loss"] == 2.1 and versions["v2"]["live"] is True
    assert versions["v3"]["val_loss"] is None
    training = status["training"]
    assert (training["status"], training["step"], training["steps"]) == ("running", 30, 100)
    assert "step 30 of 100" in training["text"] and "loss 2.500" in training["text"]
    assert status["queue"]["total"] == 3
    assert status["queue"]["shards"][1] == {"shard": 1, "depth": 3, "dead": 0}
    summary = status["summary"]
    assert summary["engines_alive"] == 2 and summary["engines_known"] == 3
    assert summary["tokens_per_s"] == 150.0
    assert summary["cache_hit_rate"] == 0.5
    assert (summary["running"], summary["waiting"]) == (2, 1)
    assert [(e["worker"], e["alive"]) for e in status["engines"]] == [
        ("a", True),
        ("b", True),
        ("dead", False),
    ]
    assert status["actions"] == {"retrain": False, "rollback": False}


async def test_loss_plot_is_served(make_client: ClientFactory) -> None:
    client = await make_client()
    response = await client.get("/admin/api/models/v1/loss.png", headers=AUTH)
    assert response.status == 200
    assert response.headers["Content-Type"] == "image/png"
    assert await response.read() == tiny_png()


@pytest.mark.parametrize(
    "version",
    ["v2", "v9", "..", "%2e%2e", "..%2f..%2fsecret", "v3", "%2e%2e%2fv1", "v1%00"],
)
async def test_loss_plot_never_leaves_the_registry(
    make_client: ClientFactory, version: str
) -> None:
    client = await make_client()
    response = await client.get(f"/admin/api/models/{version}/loss.png", headers=AUTH)
    assert response.status == 404
    assert (await response.json())["error"]["type"] == "invalid_request_error"
    assert await response.read() != b"secret"


async def test_retrain_and_rollback_are_501_until_wired(make_client: ClientFactory) -> None:
    client = await make_client()
    for path in ("/admin/api/retrain", "/admin/api/rollback"):
        response = await client.post(path, headers=AUTH)
        assert response.status == 501
        error = (await response.json())["error"]
        assert error["code"] == "not_implemented" and "not wired up" in error["message"]


async def test_retrain_and_rollback_call_the_callbacks(make_client: ClientFactory) -> None:
    calls: list[Any] = []

    async def retrain() -> str:
        calls.append("retrain")
        return "training run queued"

    async def rollback(version: str | None) -> str:
        calls.append(("rollback", version))
        if version == "v9":
            raise ModelError("no model version 'v9'")
        return f"{version or 'previous'} is live"

    client = await make_client(on_retrain=retrain, on_rollback=rollback)
    status = await (await client.get("/admin/api/status", headers=AUTH)).json()
    assert status["actions"] == {"retrain": True, "rollback": True}

    response = await client.post("/admin/api/retrain", headers=AUTH)
    assert await response.json() == {"ok": True, "message": "training run queued"}
    response = await client.post("/admin/api/rollback", headers=AUTH, json={"version": "v1"})
    assert await response.json() == {"ok": True, "message": "v1 is live"}
    response = await client.post("/admin/api/rollback", headers=AUTH, json={})
    assert await response.json() == {"ok": True, "message": "previous is live"}
    response = await client.post("/admin/api/rollback", headers=AUTH, json={"version": "v9"})
    assert response.status == 409
    assert "v9" in (await response.json())["error"]["message"]
    response = await client.post("/admin/api/rollback", headers=AUTH, json={"version": 1})
    assert response.status == 400
    assert calls == ["retrain", ("rollback", "v1"), ("rollback", None), ("rollback", "v9")]
