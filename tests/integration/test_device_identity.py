"""A device's identity cannot be taken over by whoever can write to fed.devices: its key changes
only with its old key's signature (or by an operator), an older enrolment replayed changes
nothing, and a removed device stays removed until an operator restores it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import signing, topics
from fedcommon.messages.v1 import DeviceEnrolled, DeviceType, HeartbeatSent, PrivacyLevel
from fedengine.sdk import FedEngineClient, FedEngineError
from tests.integration.conftest import Stack
from tests.integration.helpers import device_or_none, eventually
from tests.integration.kafka_tools import find_records, headers_of, send

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def _enrolment(
    device_id: str,
    key: Ed25519PrivateKey,
    *,
    privacy: PrivacyLevel = PrivacyLevel.HIGH,
    sent_at: datetime | None = None,
    handed_over_by: Ed25519PrivateKey | None = None,
) -> DeviceEnrolled:
    at = sent_at or datetime.now(UTC)
    public = signing.public_key_bytes(key)
    handover = None
    if handed_over_by is not None:
        handover = handed_over_by.sign(
            signing.key_change_payload(
                device_id=device_id,
                new_public_key=public,
                sent_at_us=int(at.timestamp() * 1_000_000),
            )
        )
    enrolment = DeviceEnrolled(
        producer="device",
        device_id=device_id,
        device_name=device_id,
        device_type=DeviceType.MOBILE,
        privacy_level=privacy,
        public_key=public,
        sent_at=at,
        key_change_signature=handover,
    )
    return signing.sign_enrolment(enrolment, key)


async def _refused(stack: Stack, message: DeviceEnrolled) -> str:
    """Send ``message`` and return the reason it was dead-lettered with."""
    await send(stack.kafka, topics.DEVICES, key=message.device_id, message=message)
    (letter,) = await find_records(
        stack.kafka,
        topics.DLQ,
        [
            lambda r: (
                r.key == message.device_id.encode()
                and str(message.message_id).encode() in (r.value or b"")
            )
        ],
    )
    headers = headers_of(letter)
    assert headers["error_type"] == "ProtocolViolation", headers
    return headers["error"]


async def _device(client: FedEngineClient, device_id: str) -> dict[str, Any]:
    device = await device_or_none(client, device_id)
    assert device is not None
    return device


async def test_a_device_cannot_be_taken_over_or_downgraded(
    stack: Stack, client: FedEngineClient
) -> None:
    device_id = f"ident-{uuid.uuid4().hex[:8]}"
    owner, thief = signing.generate_private_key(), signing.generate_private_key()
    first = _enrolment(device_id, owner)
    await send(stack.kafka, topics.DEVICES, key=device_id, message=first)
    await eventually(lambda: device_or_none(client, device_id))

    # Another key, unsigned; another key signed only by itself; an older enrolment replayed
    # with a lower privacy level: each refused, the device as it was.
    assert "old key's signature" in await _refused(stack, _enrolment(device_id, thief))
    assert "bad signature" in await _refused(
        stack, _enrolment(device_id, thief, handed_over_by=thief)
    )
    older = _enrolment(
        device_id, owner, privacy=PrivacyLevel.NONE, sent_at=first.sent_at - timedelta(hours=1)
    )
    assert "not newer" in await _refused(stack, older)
    device = await _device(client, device_id)
    assert device["public_key"] == signing.public_key_bytes(owner).hex()
    assert device["privacy_level"] == "high"

    # The owner hands the device to a new key with the old key's signature: accepted.
    rotated = signing.generate_private_key()
    await send(
        stack.kafka,
        topics.DEVICES,
        key=device_id,
        message=_enrolment(device_id, rotated, handed_over_by=owner),
    )

    async def rotated_in() -> bool:
        return (await _device(client, device_id))["public_key"] == signing.public_key_bytes(
            rotated
        ).hex()

    await eventually(rotated_in)


async def test_a_removed_device_stays_removed_until_an_operator_restores_it(
    stack: Stack, client: FedEngineClient
) -> None:
    device_id = f"removed-{uuid.uuid4().hex[:8]}"
    key = signing.generate_private_key()
    await send(stack.kafka, topics.DEVICES, key=device_id, message=_enrolment(device_id, key))
    await eventually(lambda: device_or_none(client, device_id))
    await client.remove_edge_device(device_id)

    async def status_is(wanted: str) -> bool:
        return (await _device(client, device_id))["status"] == wanted

    await eventually(lambda: status_is("removed"))

    assert "only an operator can restore" in await _refused(stack, _enrolment(device_id, key))
    with pytest.raises(FedEngineError) as conflict:  # nor through the gateway
        await client.add_edge_device(device_id=device_id, device_name="x", device_type="iot")
    assert conflict.value.status_code == 409
    assert (await _device(client, device_id))["status"] == "removed"

    await client.restore_edge_device(device_id)
    await eventually(lambda: status_is("offline"))
    sent_at = datetime.now(UTC)
    payload = signing.heartbeat_payload(
        device_id=device_id, sequence=1, sent_at_us=int(sent_at.timestamp() * 1_000_000)
    )
    beat = HeartbeatSent(
        producer="device",
        device_id=device_id,
        sequence=1,
        sent_at=sent_at,
        signature=key.sign(payload),
    )
    await send(stack.kafka, topics.DEVICES, key=device_id, message=beat)
    await eventually(lambda: status_is("online"))
