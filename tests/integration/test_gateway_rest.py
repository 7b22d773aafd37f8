"""The REST surface: 401 without a token, 403 for a weaker role, 422 for bad bodies, 202 and a
Location for commands, a task started right after its creation, pagination, device add/remove,
cleanup, health and metrics."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from fedcommon import auth, signing
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import device_or_none, eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

API = "/api/federated"
# A sound Ed25519 key whose private half nobody here holds.
STRANGER = signing.public_key_bytes(signing.generate_private_key()).hex()


def http(stack: Stack, role: auth.Role | None = None) -> httpx.AsyncClient:
    headers = {} if role is None else {"Authorization": f"Bearer {stack.token(role)}"}
    return httpx.AsyncClient(base_url=stack.stack.gateway_url + API, headers=headers)


async def test_missing_or_bad_token_is_401(stack: Stack) -> None:
    async with http(stack) as api:
        assert (await api.get("/tasks")).status_code == 401
        bad = await api.get("/tasks", headers={"Authorization": "Bearer not.a.token"})
        assert bad.status_code == 401
        forged = auth.issue_token(secret="x" * 40, subject="eve", role=auth.Role.ADMIN)
        refused = await api.get("/tasks", headers={"Authorization": f"Bearer {forged}"})
        assert refused.status_code == 401
        # The message names the mismatch: which secret signed it, and which one this gateway has.
        detail = refused.json()["detail"]
        assert "another secret" in detail and auth.key_id("x" * 40) in detail
        assert auth.key_id(stack.secret) in detail


async def test_roles_are_enforced_with_403(stack: Stack) -> None:
    async with http(stack, auth.Role.VIEWER) as viewer, http(stack, auth.Role.OPERATOR) as operator:
        assert (await viewer.get("/tasks")).status_code == 200
        assert (await viewer.post("/tasks", json={"task_name": "x"})).status_code == 403
        assert (
            await viewer.post(
                "/devices", json={"device_name": "d", "device_type": "iot", "generate_key": True}
            )
        ).status_code == 403
        assert (await operator.delete("/devices/whatever")).status_code == 403
        assert (await operator.post("/cleanup", json={})).status_code == 403


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/tasks", {}, "task_name"),
        ("/tasks", {"task_name": "t", "rounds": 0}, "rounds"),
        ("/tasks", {"task_name": "t", "model_architecture": "transformer"}, "model_architecture"),
        ("/tasks", {"task_name": "t", "unknown": 1}, "unknown"),
        ("/tasks", {"task_name": "t", "devices_per_round": 2, "min_devices": 5}, "min_devices"),
        ("/tasks", {"task_name": "t", "dataset": "cifar10"}, "dataset"),
        ("/devices", {"device_name": "d", "device_type": "toaster"}, "device_type"),
        (
            "/devices",
            {"device_name": "d", "device_type": "iot", "privacy_level": "max"},
            "privacy_level",
        ),
        ("/devices", {"device_name": "d", "device_type": "iot", "public_key": "zz"}, "public_key"),
        ("/devices", {"device_name": "d", "device_type": "iot"}, "generate_key"),
        (
            "/devices",
            {"device_name": "d", "device_type": "iot", "device_id": "d1", "public_key": STRANGER},
            "key_signature",
        ),
        (
            "/devices",
            {
                "device_name": "d",
                "device_type": "iot",
                "device_id": "d1",
                "public_key": STRANGER,
                "key_signature": "cd" * 64,
            },
            "does not verify",
        ),
    ],
)
async def test_bad_bodies_get_422_with_a_message(
    stack: Stack, path: str, body: dict[str, object], fragment: str
) -> None:
    async with http(stack, auth.Role.ADMIN) as api:
        response = await api.post(path, json=body)
    assert response.status_code == 422, response.text
    assert fragment in response.text


async def test_devices_can_be_added_listed_and_removed(
    stack: Stack, client: FedEngineClient
) -> None:
    async with http(stack, auth.Role.OPERATOR) as api:
        response = await api.post(
            "/devices",
            json={
                "device_name": "kitchen sensor",
                "device_type": "iot",
                "privacy_level": "high",
                "generate_key": True,
            },
        )
    assert response.status_code == 202
    accepted = response.json()
    assert response.headers["Location"] == f"{API}/devices/{accepted['id']}"
    assert len(accepted["private_key"]) == 64
    assert accepted["coordinator_public_key"] == stack.coordinator_public_key
    device = await eventually(lambda: device_or_none(client, accepted["id"]))
    assert (device["device_type"], device["privacy_level"], device["status"]) == (
        "iot",
        "high",
        "online",
    )
    assert len(device["public_key"]) == 64

    removed = await client.remove_edge_device(accepted["id"])
    assert removed["id"] == accepted["id"]

    async def gone() -> bool:
        return (await client.get_device(accepted["id"]))["status"] == "removed"

    await eventually(gone)
    page = (await client._request("GET", "/devices", params={"limit": 1, "offset": 0})).json()
    assert page["limit"] == 1 and len(page["items"]) == 1 and page["total"] >= 1


async def test_a_fleet_s_devices_are_counted_by_id_prefix(
    stack: Stack, client: FedEngineClient, fleet: str
) -> None:
    await client.wait_for_devices(8, prefix=f"{fleet}-")
    async with http(stack, auth.Role.VIEWER) as api:
        counted = (
            await api.get(
                "/devices", params={"prefix": f"{fleet}-", "status": "online", "limit": 1}
            )
        ).json()
        # '_' and '%' are no wildcards, and a prefix outside the id alphabet is refused.
        wild = (await api.get("/devices", params={"prefix": "%", "limit": 1})).status_code
        literal = (await api.get("/devices", params={"prefix": "_", "limit": 1})).json()

    assert counted["total"] == 8 and len(counted["items"]) == 1
    assert counted["items"][0]["device_id"].startswith(f"{fleet}-")
    assert wild == 422
    assert literal["total"] == 0


async def test_unknown_ids_are_404(stack: Stack) -> None:
    async with http(stack, auth.Role.ADMIN) as api:
        assert (await api.get(f"/tasks/{uuid.uuid4()}")).status_code == 404
        assert (await api.post(f"/tasks/{uuid.uuid4()}/start")).status_code == 404
        assert (await api.get("/devices/nope")).status_code == 404
        assert (await api.get(f"/tasks/{uuid.uuid4()}/model")).status_code == 404
        assert (await api.get("/tasks/not-a-uuid")).status_code == 422


async def test_status_health_metrics_cleanup_and_openapi(stack: Stack) -> None:
    async with http(stack, auth.Role.ADMIN) as api:
        health = (await api.get("/health")).json()
        assert (health["status"], health["database"]["state"], health["broker"]["state"]) == (
            "ok",
            "up",
            "up",
        )
        ready = await api.get("/ready")
        assert (ready.status_code, ready.json()["down"]) == (200, [])
        status = (await api.get("/status")).json()
        assert set(status) == {"devices", "tasks", "rounds_completed", "updates"}
        metrics = await api.get("/metrics")
        assert metrics.status_code == 200
        assert "fedengine_projection" in metrics.text
        cleanup = await api.post("/cleanup", json={"retention_s": 86400})
        assert cleanup.status_code == 202
    async with httpx.AsyncClient(base_url=stack.stack.gateway_url) as root:
        assert (await root.get("/docs")).status_code == 200
        schema = (await root.get("/openapi.json")).json()
        assert f"{API}/tasks/{{task_id}}/start" in schema["paths"]


async def test_commands_that_cannot_apply_get_409(stack: Stack, client: FedEngineClient) -> None:
    task_id = await client.create_federated_task(task_name="conflicts", devices_per_round=1)
    async with http(stack, auth.Role.OPERATOR) as api:
        paused = await api.post(f"/tasks/{task_id}/pause")
        assert paused.status_code == 409
        assert paused.json()["detail"] == "cannot pause a task that is created"
        assert (await api.post(f"/tasks/{task_id}/cancel")).status_code == 202
        await client.wait_for_task(task_id, lambda t: t["state"] == "cancelled")
        for command in ("start", "resume", "cancel"):
            response = await api.post(f"/tasks/{task_id}/{command}")
            assert response.status_code == 409, command
            assert "cancelled" in response.json()["detail"]


async def test_a_device_enrolled_over_rest_with_its_own_key_proves_it_holds_it(
    stack: Stack, client: FedEngineClient
) -> None:
    device_id = f"own-key-{uuid.uuid4().hex[:8]}"
    key = signing.generate_private_key()
    public = signing.public_key_bytes(key)
    body = {
        "device_id": device_id,
        "device_name": "own key",
        "device_type": "mobile",
        "public_key": public.hex(),
        "key_signature": key.sign(
            signing.possession_payload(device_id=device_id, public_key=public)
        ).hex(),
    }
    async with http(stack, auth.Role.OPERATOR) as api:
        # Another device's id under the same signature does not verify.
        stolen = await api.post("/devices", json={**body, "device_id": f"{device_id}-x"})
        assert stolen.status_code == 422 and "does not verify" in stolen.text
        response = await api.post("/devices", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert "private_key" not in accepted
    assert accepted["coordinator_public_key"] == stack.coordinator_public_key
    device = await eventually(lambda: device_or_none(client, device_id))
    assert device["public_key"] == public.hex()


def _projection_waits(metrics: str) -> float:
    (line,) = [
        line
        for line in metrics.splitlines()
        if line.startswith("fedengine_gateway_projection_wait_seconds_count")
    ]
    return float(line.rsplit(" ", 1)[1])


async def test_a_task_can_be_started_the_moment_its_creation_returns(stack: Stack) -> None:
    # Tasks no device may join: each fails with too_few_devices a second after its start,
    # and no task of another test loses a device to them.
    body = {
        "task_name": "started at once",
        "participating_devices": [f"ghost-{uuid.uuid4().hex[:6]}"],
        "devices_per_round": 1,
        "device_wait_s": 1,
    }
    async with http(stack, auth.Role.OPERATOR) as api:
        waits_before = _projection_waits((await api.get("/metrics")).text)
        answers = []
        for _ in range(25):
            created = await api.post("/tasks", json=body)
            started = await api.post(f"/tasks/{created.json()['id']}/start")
            read = await api.get(f"/tasks/{created.json()['id']}")
            answers.append((created.status_code, started.status_code, read.status_code))
        waits = _projection_waits((await api.get("/metrics")).text) - waits_before

    assert answers == [(202, 202, 200)] * 25
    # The gateway did wait for its own ids: the race the test is about was met.
    assert waits > 0, "every projection was there before the start: the test proves nothing"


async def test_an_unknown_task_is_404_at_once(stack: Stack) -> None:
    async with http(stack, auth.Role.OPERATOR) as api:
        began = time.monotonic()
        read = await api.get(f"/tasks/{uuid.uuid4()}")
        started = await api.post(f"/tasks/{uuid.uuid4()}/start")
        took = time.monotonic() - began

    assert (read.status_code, started.status_code) == (404, 404)
    assert took < 0.5, took  # only ids this gateway issued wait for their projection
