"""A device fetches, as itself (its own Ed25519 key, no JWT), the model version it was asked to
train on, and nothing else: GET /devices/{device_id}/tasks/{task_id}/models/{version} on the
real stack, with devices this test enrols and whose keys it holds."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any
from uuid import UUID

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import signing
from fedcommon.messages.v1 import DeviceType
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import device_or_none, eventually
from tests.integration.kafka_tools import enrol
from tests.integration.manual_devices import constant_delta, open_manual_round

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SIGNATURE_REFUSED = "the device signature does not verify"


def _headers(
    key: Ed25519PrivateKey,
    *,
    device_id: str,
    task_id: UUID,
    version: int,
    sent_at_us: int | None = None,
) -> dict[str, str]:
    """The headers with which ``key`` signs a fetch of ``version`` as ``device_id``."""
    sent_at_us = time.time_ns() // 1000 if sent_at_us is None else sent_at_us
    payload = signing.model_fetch_payload(
        device_id=device_id, task_id=task_id, version=version, sent_at_us=sent_at_us
    )
    return {"X-Device-Sent-At": str(sent_at_us), "X-Device-Signature": key.sign(payload).hex()}


async def _fetch(
    http: httpx.AsyncClient,
    device_id: str,
    task_id: UUID,
    version: int,
    headers: dict[str, str],
) -> httpx.Response:
    return await http.get(f"/devices/{device_id}/tasks/{task_id}/models/{version}", headers=headers)


async def _metric(http: httpx.AsyncClient, outcome: str) -> float:
    text = (await http.get("/metrics")).text
    prefix = f'fedengine_gateway_device_model_fetches_total{{outcome="{outcome}"}} '
    (line,) = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


async def test_a_device_fetches_the_version_it_was_asked_to_train_on_and_nothing_else(
    stack: Stack, client: FedEngineClient
) -> None:
    # Prepare: a one-round task on two devices of ours, and a third enrolled device that no
    # task selected.
    round_ = await open_manual_round(stack, client, label="fetch", count=2)
    asked, other = round_.names
    request = round_.requests[asked]
    task_id, version = request.task_id, request.model_version
    outsider = f"fetch-outsider-{uuid.uuid4().hex[:6]}"
    outsider_key = await enrol(
        stack.kafka, outsider, token=stack.enrolment_token, device_type=DeviceType.DESKTOP
    )
    await eventually(lambda: device_or_none(client, outsider))
    key = round_.keys[asked]

    async with httpx.AsyncClient(base_url=stack.stack.gateway_url + "/api/federated") as http:
        before = {
            outcome: await _metric(http, outcome)
            for outcome in ("served", "not_asked", "bad_signature", "outside_window")
        }

        # Execute / Assert: the asked device gets its version, the one its train request names.
        served = await _fetch(
            http,
            asked,
            task_id,
            version,
            _headers(key, device_id=asked, task_id=task_id, version=version),
        )
        assert served.status_code == 200, served.text
        assert served.headers["content-type"] == "application/octet-stream"
        assert hashlib.sha256(served.content).hexdigest() == request.model_sha256
        assert served.headers["X-Model-SHA256"] == request.model_sha256
        assert served.headers["X-Model-Version"] == str(version)
        data, digest, _ = await client.download_model(str(task_id), version=version)
        assert (served.content, served.headers["X-Model-SHA256"]) == (data, digest)

        # Another version of the same task: never asked, 403 naming device, task and version.
        later = version + 1
        refused = await _fetch(
            http,
            asked,
            task_id,
            later,
            _headers(key, device_id=asked, task_id=task_id, version=later),
        )
        assert refused.status_code == 403
        assert refused.json() == {
            "detail": f"device {asked} was not asked to train on model version {later} of "
            f"task {task_id}"
        }

        # An enrolled device that was not selected, signing correctly as itself: 403.
        refused = await _fetch(
            http,
            outsider,
            task_id,
            version,
            _headers(outsider_key, device_id=outsider, task_id=task_id, version=version),
        )
        assert refused.status_code == 403
        assert refused.json()["detail"] == (
            f"device {outsider} was not asked to train on model version {version} of task {task_id}"
        )

        # 401s, one answer whatever the reason behind it.
        good = _headers(key, device_id=asked, task_id=task_id, version=version)
        flipped = bytearray.fromhex(good["X-Device-Signature"])
        flipped[0] ^= 1
        forgeries: dict[str, tuple[str, dict[str, str]]] = {
            "a flipped bit": (asked, {**good, "X-Device-Signature": flipped.hex()}),
            # Signed for another time than the header claims.
            "another send time": (
                asked,
                {**good, "X-Device-Sent-At": str(int(good["X-Device-Sent-At"]) + 1)},
            ),
            # The selected device's id, signed with another enrolled device's key.
            "another device's key": (
                asked,
                _headers(round_.keys[other], device_id=asked, task_id=task_id, version=version),
            ),
            # A device that does not exist, with a key of its own.
            "an unknown device": (
                "fetch-nobody",
                _headers(
                    signing.generate_private_key(),
                    device_id="fetch-nobody",
                    task_id=task_id,
                    version=version,
                ),
            ),
        }
        for why, (device_id, headers) in forgeries.items():
            refused = await _fetch(http, device_id, task_id, version, headers)
            assert (refused.status_code, refused.json()) == (
                401,
                {"detail": SIGNATURE_REFUSED},
            ), why
            assert refused.headers["WWW-Authenticate"] == "FedEngine-Device"

        # Correctly signed, but sent 301 s ago: outside the 300 s window.
        stale = _headers(
            key,
            device_id=asked,
            task_id=task_id,
            version=version,
            sent_at_us=time.time_ns() // 1000 - 301_000_000,
        )
        refused = await _fetch(http, asked, task_id, version, stale)
        assert refused.status_code == 401
        assert refused.json()["detail"].startswith("the request time is outside the window")

        # The gateway keeps serving: the asked device again, and the other asked device.
        again = await _fetch(
            http,
            asked,
            task_id,
            version,
            _headers(key, device_id=asked, task_id=task_id, version=version),
        )
        assert again.status_code == 200
        assert again.content == served.content
        second = await _fetch(
            http,
            other,
            task_id,
            version,
            _headers(round_.keys[other], device_id=other, task_id=task_id, version=version),
        )
        assert second.status_code == 200
        assert second.headers["X-Model-SHA256"] == round_.requests[other].model_sha256
        assert (await http.get("/ready")).status_code == 200

        # Each outcome was counted (other tests share the gateway: at least these).
        after = {outcome: await _metric(http, outcome) for outcome in before}
        assert after["served"] - before["served"] >= 3
        assert after["not_asked"] - before["not_asked"] >= 2
        assert after["bad_signature"] - before["bad_signature"] >= len(forgeries)
        assert after["outside_window"] - before["outside_window"] >= 1

    # The round completes as usual; nothing here disturbed it.
    task = await round_.send_all(stack, constant_delta(0.01))
    assert task["state"] == "completed", task

    # Once /cleanup has dropped the version (all but a finished task's last), it is 404.
    await client.cleanup(retention_s=0)
    async with httpx.AsyncClient(base_url=stack.stack.gateway_url + "/api/federated") as http:

        async def gone() -> httpx.Response | None:
            headers = _headers(key, device_id=asked, task_id=task_id, version=version)
            response = await _fetch(http, asked, task_id, version, headers)
            return response if response.status_code != 200 else None

        missing = await eventually(gone, timeout_s=30)
    assert (missing.status_code, missing.json()) == (
        404,
        {"detail": f"model version {version} of task {task_id} is not in the store"},
    )


async def test_a_removed_device_is_refused_like_an_unknown_one(
    stack: Stack, client: FedEngineClient
) -> None:
    # Prepare: a device asked to train, then removed by an admin.
    round_ = await open_manual_round(stack, client, label="fetchrm", count=2)
    asked = round_.names[0]
    request = round_.requests[asked]
    headers_before = _headers(
        round_.keys[asked],
        device_id=asked,
        task_id=request.task_id,
        version=request.model_version,
    )
    async with httpx.AsyncClient(base_url=stack.stack.gateway_url + "/api/federated") as http:
        served = await _fetch(http, asked, request.task_id, request.model_version, headers_before)
        assert served.status_code == 200
        await client.remove_edge_device(asked)

        async def removed() -> dict[str, Any] | None:
            device = await device_or_none(client, asked)
            return device if device is not None and device["status"] == "removed" else None

        await eventually(removed)

        # Execute
        refused = await _fetch(
            http,
            asked,
            request.task_id,
            request.model_version,
            _headers(
                round_.keys[asked],
                device_id=asked,
                task_id=request.task_id,
                version=request.model_version,
            ),
        )

    # Assert: the same answer as for a device that never existed.
    assert (refused.status_code, refused.json()) == (401, {"detail": SIGNATURE_REFUSED})
    await client.cancel_task(round_.task_id)  # its removed device will not answer
