"""The device model fetch in-process, for what is answered before the database: the header and
time checks (401), the path checks (422), the counter. The app has no connection pool here, so
a request that reached the database would fail loudly; the database paths are in
tests/integration/test_device_model_fetch.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from fedcommon import signing
from fedcommon.constraints import INT32_MAX
from fedengine_gateway.app import create_app
from fedengine_gateway.settings import Settings

SECRET = "s" * 40
COORDINATOR_KEY = signing.public_key_bytes(signing.generate_private_key()).hex()
KEY = signing.generate_private_key()
TASK = uuid.UUID("6f1c2a3e-0000-4000-8000-00000000f00d")
# A well-formed send time: the header's format is checked before the window.
SENT_AT = "1800000000000000"


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        FEDENGINE_JWT_SECRET=SecretStr(SECRET),
        postgres={"DATABASE_URL": "postgresql://unused"},  # type: ignore[arg-type]
        trust={"FEDENGINE_SERVICE_KEYS": {"coordinator": COORDINATOR_KEY}},  # type: ignore[arg-type]
        device_request_window_s=60,
    )
    app = create_app(settings)  # no lifespan: no pool, no producer
    app.state.settings = settings
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway/api/federated"
    ) as client:
        yield client


def _signed(device_id: str, version: int, *, sent_at_us: int | None = None) -> dict[str, str]:
    sent_at_us = time.time_ns() // 1000 if sent_at_us is None else sent_at_us
    payload = signing.model_fetch_payload(
        device_id=device_id, task_id=TASK, version=version, sent_at_us=sent_at_us
    )
    return {"X-Device-Sent-At": str(sent_at_us), "X-Device-Signature": KEY.sign(payload).hex()}


def _fetches(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "fedengine_gateway_device_model_fetches_total", {"outcome": outcome}
    )
    return 0.0 if value is None else value


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({}, "missing header X-Device-Sent-At"),
        ({"X-Device-Sent-At": SENT_AT}, "missing header X-Device-Signature"),
        ({"X-Device-Sent-At": "soon", "X-Device-Signature": "00" * 64}, "X-Device-Sent-At"),
        ({"X-Device-Sent-At": str(2**64), "X-Device-Signature": "00" * 64}, "X-Device-Sent-At"),
        (
            {"X-Device-Sent-At": SENT_AT, "X-Device-Signature": "zz" * 64},
            "X-Device-Signature",
        ),
        (
            {"X-Device-Sent-At": SENT_AT, "X-Device-Signature": "00" * 63},
            "X-Device-Signature",
        ),
    ],
)
async def test_missing_or_malformed_headers_are_401_naming_the_header_before_any_lookup(
    api: httpx.AsyncClient, headers: dict[str, str], named: str
) -> None:
    # Prepare
    before = _fetches("malformed_headers")

    # Execute
    response = await api.get(f"/devices/dev-1/tasks/{TASK}/models/0", headers=headers)

    # Assert
    assert response.status_code == 401
    assert named in response.json()["detail"]
    assert response.headers["WWW-Authenticate"] == "FedEngine-Device"
    assert _fetches("malformed_headers") == before + 1


@pytest.mark.parametrize("skew_s", [-61, 61, -86_400])
async def test_a_send_time_outside_the_window_is_401_saying_so(
    api: httpx.AsyncClient, skew_s: int
) -> None:
    # Prepare: correctly signed, but at a time outside the 60 s window.
    headers = _signed("dev-1", 0, sent_at_us=time.time_ns() // 1000 + skew_s * 1_000_000)
    before = _fetches("outside_window")

    # Execute
    response = await api.get(f"/devices/dev-1/tasks/{TASK}/models/0", headers=headers)

    # Assert
    assert response.status_code == 401
    assert response.json()["detail"].startswith("the request time is outside the window")
    assert "at most 60 s either way" in response.json()["detail"]
    assert _fetches("outside_window") == before + 1


async def test_a_refusal_is_logged_with_its_reason_and_never_the_signature(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    headers = _signed("dev-1", 3, sent_at_us=1)

    # Execute
    with caplog.at_level("WARNING", logger="fedengine_gateway.device_models"):
        await api.get(f"/devices/dev-1/tasks/{TASK}/models/3", headers=headers)

    # Assert
    (record,) = [r for r in caplog.records if r.name == "fedengine_gateway.device_models"]
    assert record.levelname == "WARNING"
    assert "outside the window" in record.getMessage()
    assert "dev-1" in record.getMessage()
    assert headers["X-Device-Signature"] not in record.getMessage()


@pytest.mark.parametrize(
    "path",
    [
        f"/devices/dev%201/tasks/{TASK}/models/0",  # a space: not a device id
        f"/devices/{'d' * 201}/tasks/{TASK}/models/0",  # too long
        f"/devices/dev%00/tasks/{TASK}/models/0",  # a NUL byte
        "/devices/dev-1/tasks/not-a-uuid/models/0",
        f"/devices/dev-1/tasks/{TASK}/models/-1",
        f"/devices/dev-1/tasks/{TASK}/models/{INT32_MAX + 1}",
        f"/devices/dev-1/tasks/{TASK}/models/{2**64}",
        f"/devices/dev-1/tasks/{TASK}/models/1.5",
    ],
)
async def test_a_bad_path_is_422_naming_the_field(api: httpx.AsyncClient, path: str) -> None:
    # Execute: validly signed headers, so only the path can be wrong.
    response = await api.get(path, headers=_signed("dev-1", 0))

    # Assert
    assert response.status_code == 422
    assert [error["loc"][0] for error in response.json()["detail"]] == ["path"]


async def test_the_endpoint_is_in_the_openapi_with_its_headers_and_no_bearer(
    api: httpx.AsyncClient,
) -> None:
    # Execute
    schema = (await api.get("http://gateway/openapi.json")).json()

    # Assert
    operation = schema["paths"][
        "/api/federated/devices/{device_id}/tasks/{task_id}/models/{version}"
    ]["get"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"X-Device-Sent-At", "X-Device-Signature"}
    assert "security" not in operation
    assert {"200", "401", "403", "404", "422", "503"} <= set(operation["responses"])
