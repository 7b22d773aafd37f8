"""Registry: silent devices go offline, a signed heartbeat brings them back, forged or replayed
heartbeats are dead-lettered, removal sticks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from fedcommon import signing, topics
from fedcommon.messages.v1 import DeviceRemoved, DeviceType, HeartbeatSent
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import eventually
from tests.integration.kafka_tools import enrol, find_record, headers_of, send

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def heartbeat(device_id: str, key, sequence: int, *, signer=None) -> HeartbeatSent:  # type: ignore[no-untyped-def]
    sent_at = datetime.now(UTC)
    payload = signing.heartbeat_payload(
        device_id=device_id, sequence=sequence, sent_at_us=int(sent_at.timestamp() * 1_000_000)
    )
    return HeartbeatSent(
        producer="pytest",
        device_id=device_id,
        sequence=sequence,
        sent_at=sent_at,
        signature=(signer or key).sign(payload),
    )


async def status_of(client: FedEngineClient, device_id: str) -> str | None:
    devices = [d for d in await client.list_devices() if d["device_id"] == device_id]
    return devices[0]["status"] if devices else None


async def test_silence_offline_heartbeat_online_forgery_rejected_removal(
    stack: Stack, client: FedEngineClient
) -> None:
    device_id = f"hb-{uuid.uuid4().hex[:8]}"
    key = await enrol(
        stack.kafka, device_id, token=stack.enrolment_token, device_type=DeviceType.MOBILE
    )
    await eventually(lambda: _is(client, device_id, "online"))

    await eventually(lambda: _is(client, device_id, "offline"), timeout_s=20)

    await send(stack.kafka, topics.DEVICES, key=device_id, message=heartbeat(device_id, key, 5))
    await eventually(lambda: _is(client, device_id, "online"))

    forged = heartbeat(device_id, key, 6, signer=signing.generate_private_key())
    await send(stack.kafka, topics.DEVICES, key=device_id, message=forged)
    replayed = heartbeat(device_id, key, 5)
    await send(stack.kafka, topics.DEVICES, key=device_id, message=replayed)
    for words in ("bad signature", "replayed heartbeat"):
        record = await find_record(
            stack.kafka,
            topics.DLQ,
            lambda r, w=words: (
                headers_of(r).get("error_type") == "ProtocolViolation"
                and r.key == device_id.encode()
                and w in headers_of(r)["error"]
            ),
        )
        assert headers_of(record)["original_topic"].endswith(topics.DEVICES)

    await send(
        stack.kafka,
        topics.DEVICES,
        key=device_id,
        message=DeviceRemoved(producer="pytest", device_id=device_id, issued_by="pytest"),
        signer=stack.signer("gateway"),  # only the gateway may remove a device
    )
    await eventually(lambda: _is(client, device_id, "removed"))


async def _is(client: FedEngineClient, device_id: str, status: str) -> bool:
    return await status_of(client, device_id) == status


async def test_offline_detection_carries_on_after_a_registry_restart(
    stack: Stack, client: FedEngineClient
) -> None:
    from fedengine import launcher

    device_id = f"survivor-{uuid.uuid4().hex[:8]}"
    key = await enrol(stack.kafka, device_id, token=stack.enrolment_token)
    await eventually(lambda: _is(client, device_id, "online"))

    launcher.restart(stack.settings, "registry")
    # The restarted registry knows the device only from PostgreSQL: it is silent now, so the
    # new process's timer must find it and mark it offline.
    await eventually(lambda: _is(client, device_id, "offline"), timeout_s=30)
    await send(stack.kafka, topics.DEVICES, key=device_id, message=heartbeat(device_id, key, 1))
    await eventually(lambda: _is(client, device_id, "online"))
