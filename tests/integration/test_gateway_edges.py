"""The gateway's edges: values the services or PostgreSQL would refuse get 422 (never a 202 that
is dead-lettered later, never a 500), bodies over the limit get 413, tokens whose subject is not
a valid name get 401, and a 422 names the field without echoing the input."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from fedcommon import auth
from fedcommon.constraints import INT32_MAX, INT64_MAX, SEED_MAX
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

API = "/api/federated"
MB = 1024 * 1024


def http(stack: Stack, token: str | None = None) -> httpx.AsyncClient:
    token = token or stack.token(auth.Role.ADMIN)
    return httpx.AsyncClient(
        base_url=stack.stack.gateway_url + API,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _locs(response: httpx.Response) -> list[list[str | int]]:
    assert response.status_code == 422, response.text
    return [error["loc"] for error in response.json()["detail"]]


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/tasks", {"task_name": "a\x00b"}, ["body", "task_name"]),
        ("/tasks", {"task_name": "t", "participating_devices": ["d\x00"]}, None),
        ("/devices", {"device_name": "a\x00", "device_type": "iot"}, ["body", "device_name"]),
        ("/devices", {"device_name": "d", "device_type": "iot", "device_id": "a\x00"}, None),
        ("/tasks", {"task_name": "t", "seed": -1}, ["body", "seed"]),
        ("/tasks", {"task_name": "t", "seed": SEED_MAX + 1}, ["body", "seed"]),
        ("/tasks", {"task_name": "t", "seed": 2**63}, ["body", "seed"]),
        ("/tasks", {"task_name": "t", "seed": 2**64}, ["body", "seed"]),
        ("/tasks", {"task_name": "t", "rounds": 2**63}, ["body", "rounds"]),
        ("/tasks", {"task_name": "t", "patience": 2**64}, ["body", "patience"]),
        ("/tasks", {"task_name": "t", "devices_per_round": 2**63}, ["body", "devices_per_round"]),
        (
            "/devices",
            {"device_name": "d", "device_type": "iot", "capabilities": {"memory_mb": 2**64}},
            ["body", "capabilities", "memory_mb"],
        ),
        ("/cleanup", {"retention_s": 1e300}, ["body", "retention_s"]),
        ("/tasks", {"task_name": "t", "participating_devices": []}, ["body"]),
    ],
)
async def test_values_the_services_refuse_get_422(
    stack: Stack, path: str, body: dict[str, object], loc: list[str] | None
) -> None:
    async with http(stack) as api:
        response = await api.post(path, json=body)
    locs = _locs(response)
    if loc is not None:
        assert loc in locs


@pytest.mark.parametrize(
    ("path", "raw", "loc"),
    [
        ("/tasks", b'{"task_name": "t", "learning_rate": NaN}', ["body", "learning_rate"]),
        ("/tasks", b'{"task_name": "t", "round_timeout_s": Infinity}', ["body", "round_timeout_s"]),
        ("/cleanup", b'{"retention_s": -Infinity}', ["body", "retention_s"]),
        (
            "/devices",
            b'{"device_name": "d", "device_type": "iot", "capabilities": {"compute_gflops": NaN}}',
            ["body", "capabilities", "compute_gflops"],
        ),
    ],
)
async def test_non_finite_json_numbers_get_422(
    stack: Stack, path: str, raw: bytes, loc: list[str]
) -> None:
    async with http(stack) as api:
        response = await api.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert loc in _locs(response)


async def test_bounds_that_fit_the_services_are_accepted(stack: Stack) -> None:
    async with http(stack) as api:
        task = await api.post("/tasks", json={"task_name": "edges", "seed": SEED_MAX})
        assert task.status_code == 202, task.text
        page = await api.get("/tasks", params={"offset": INT64_MAX, "limit": 1})
        assert page.status_code == 200, page.text
        assert page.json()["items"] == []
        model = await api.get(f"/tasks/{uuid.uuid4()}/model", params={"version": INT32_MAX})
        assert model.status_code == 404


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/tasks", {"offset": 2**63}),
        ("/devices", {"offset": 2**63}),
        ("/devices", {"offset": 2**64}),
        (f"/tasks/{uuid.UUID(int=0)}/rounds", {"offset": 2**63}),
        (f"/tasks/{uuid.UUID(int=0)}/events", {"offset": 2**63}),
        (f"/tasks/{uuid.UUID(int=0)}/model", {"version": 2**31}),
        (f"/tasks/{uuid.UUID(int=0)}/model", {"version": 2**64}),
        ("/tasks", {"offset": "NaN"}),
        ("/tasks", {"state": "exploded"}),
        ("/tasks", {"state": "created\x00"}),
        ("/devices", {"status": "\x00"}),
        ("/devices", {"status": "sleeping"}),
    ],
)
async def test_query_values_out_of_range_get_422(
    stack: Stack, path: str, params: dict[str, object]
) -> None:
    async with http(stack) as api:
        response = await api.get(path, params=params)
    (loc,) = _locs(response)
    assert loc[0] == "query"


@pytest.mark.parametrize("device_id", ["a%00b", "%00", "x" * 201, "semi;colon"])
async def test_device_ids_outside_the_pattern_get_422(stack: Stack, device_id: str) -> None:
    async with http(stack) as api:
        for response in (
            await api.get(f"/devices/{device_id}"),
            await api.delete(f"/devices/{device_id}"),
        ):
            assert _locs(response) == [["path", "device_id"]]


async def test_bodies_over_the_limit_get_413_with_and_without_content_length(
    stack: Stack,
) -> None:
    big = b"x" * (10 * MB)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    async with http(stack) as api:
        declared = await api.post(
            "/tasks", content=big, headers={"Content-Type": "application/json"}
        )
        streamed = await api.post(
            "/tasks", content=chunks(), headers={"Content-Type": "application/json"}
        )
        after = await api.get("/status")
    assert "content-length" not in streamed.request.headers
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "larger than" in response.json()["detail"]
    assert after.status_code == 200


async def test_a_422_names_the_field_without_echoing_the_input(stack: Stack) -> None:
    huge = "y" * 600_000
    async with http(stack) as api:
        long_name = await api.post("/tasks", json={"task_name": huge})
        long_key = await api.post("/tasks", json={"task_name": "t", huge: 1})
        many = await api.post(
            "/tasks", json={"task_name": "t", "participating_devices": ["a\x00"] * 10_000}
        )
    for response in (long_name, long_key, many):
        assert response.status_code == 422
        assert len(response.content) < 8_000
        assert "y" * 200 not in response.text  # an unknown key is named, clipped
        for error in response.json()["detail"]:
            assert set(error) == {"loc", "msg", "type"}
    assert long_name.json()["detail"][0]["loc"] == ["body", "task_name"]
    assert "200 characters" in long_name.json()["detail"][0]["msg"]


async def test_unparseable_json_is_a_documented_4xx(stack: Stack) -> None:
    headers = {"Content-Type": "application/json"}
    async with http(stack) as api:
        truncated = await api.post("/tasks", content=b'{"task_name": ', headers=headers)
        digits = await api.post(
            "/tasks", content=b'{"rounds": ' + b"9" * 5000 + b"}", headers=headers
        )
        nested = await api.post("/tasks", content=b"[" * 100_000, headers=headers)
    assert truncated.status_code == 422
    assert truncated.json()["detail"][0]["type"] == "json_invalid"
    for response in (digits, nested):
        assert response.status_code == 400
        assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("subject", ["a\x00b", "x" * 201, ""])
async def test_tokens_whose_subject_is_not_a_name_get_401(stack: Stack, subject: str) -> None:
    token = auth.issue_token(secret=stack.secret, subject=subject, role=auth.Role.ADMIN)
    async with http(stack, token) as api:
        created = await api.post("/tasks", json={"task_name": "t"})
        listed = await api.get("/tasks")
    assert (created.status_code, listed.status_code) == (401, 401)
    assert created.headers["WWW-Authenticate"] == "Bearer"


async def test_every_operation_documents_its_error_codes(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.stack.gateway_url) as root:
        schema = (await root.get("/openapi.json")).json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert "413" in codes, (method, path)
            # Liveness answers 200 while the process serves, whatever is down.
            assert ("503" in codes) == (path != f"{API}/health"), (method, path)
            if path not in (f"{API}/health", f"{API}/ready", f"{API}/metrics"):
                assert "401" in codes, (method, path)
            if operation.get("parameters") or operation.get("requestBody"):
                error = operation["responses"]["422"]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/ValidationErrorBody"}
            body = operation.get("requestBody")
            if body and "application/json" in body["content"]:
                # 400 is a JSON body that does not parse; a file upload has no JSON to parse.
                assert "400" in codes, (method, path)
