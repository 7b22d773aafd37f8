"""A device's identity cannot be taken over by whoever can write to fed.devices: it enrols only
with an operator's token for its fleet, its key changes only with its old key's signature (or by
an operator), an older enrolment replayed changes nothing, and a removed device stays removed
until an operator restores it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import enrolment_tokens, signing, topics
from fedcommon.enrolment_tokens import EnrolmentToken
from fedcommon.messages.v1 import (
    DeviceEnrolled,
    DeviceType,
    EnrolmentTokenIssued,
    HeartbeatSent,
    PrivacyLevel,
)
from fedengine.sdk import FedEngineClient, FedEngineError
from tests.integration.conftest import Stack
from tests.integration.helpers import device_or_none, eventually
from tests.integration.kafka_tools import enrolment, find_records, headers_of, send

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def _enrolment(
    device_id: str,
    key: Ed25519PrivateKey,
    token: EnrolmentToken,
    *,
    privacy: PrivacyLevel = PrivacyLevel.HIGH,
    sent_at: datetime | None = None,
    handed_over_by: Ed25519PrivateKey | None = None,
) -> DeviceEnrolled:
    at = sent_at or datetime.now(UTC)
    handover = None
    if handed_over_by is not None:
        handover = handed_over_by.sign(
            signing.key_change_payload(
                device_id=device_id,
                new_public_key=signing.public_key_bytes(key),
                sent_at_us=int(at.timestamp() * 1_000_000),
            )
        )
    return enrolment(
        device_id,
        key,
        token,
        device_type=DeviceType.MOBILE,
        privacy_level=privacy,
        sent_at=at,
        key_change_signature=handover,
    )


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
    first = _enrolment(device_id, owner, stack.enrolment_token)
    await send(stack.kafka, topics.DEVICES, key=device_id, message=first)
    await eventually(lambda: device_or_none(client, device_id))

    # Another key, unsigned; another key signed only by itself; an older enrolment replayed
    # with a lower privacy level: each refused, the device as it was.
    assert "old key's signature" in await _refused(
        stack, _enrolment(device_id, thief, stack.enrolment_token)
    )
    assert "bad signature" in await _refused(
        stack, _enrolment(device_id, thief, stack.enrolment_token, handed_over_by=thief)
    )
    older = _enrolment(
        device_id,
        owner,
        stack.enrolment_token,
        privacy=PrivacyLevel.NONE,
        sent_at=first.sent_at - timedelta(hours=1),
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
        message=_enrolment(device_id, rotated, stack.enrolment_token, handed_over_by=owner),
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
    await send(
        stack.kafka,
        topics.DEVICES,
        key=device_id,
        message=_enrolment(device_id, key, stack.enrolment_token),
    )
    await eventually(lambda: device_or_none(client, device_id))
    await client.remove_edge_device(device_id)

    async def status_is(wanted: str) -> bool:
        return (await _device(client, device_id))["status"] == wanted

    await eventually(lambda: status_is("removed"))

    assert "only an operator can restore" in await _refused(
        stack, _enrolment(device_id, key, stack.enrolment_token)
    )
    with pytest.raises(FedEngineError) as conflict:  # nor through the gateway
        await client.add_edge_device(
            device_id=device_id, device_name="x", device_type="iot", generate_key=True
        )
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


async def test_only_a_valid_enrolment_token_enrols_a_device(
    stack: Stack, client: FedEngineClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    issued = await client.issue_enrolment_token(f"tok-{tag}", max_devices=1)
    assert issued["recorded"] is True
    assert issued["coordinator_public_key"] == stack.coordinator_public_key
    token = EnrolmentToken.decode(issued["token"])
    assert token.coordinator_key.hex() == stack.coordinator_public_key
    assert token.aggregator_key is not None
    assert token.aggregator_key.hex() == stack.aggregator_public_key

    # Without a token, or with one the registry never issued: no device.
    stranger = f"stranger-{tag}"
    unsigned_key = signing.generate_private_key()
    no_token = signing.sign_enrolment(
        _enrolment(stranger, unsigned_key, token).model_copy(
            update={"enrolment_token_id": None, "token_signature": None}
        ),
        unsigned_key,
    )
    assert "needs an enrolment token" in await _refused(stack, no_token)
    made_up = enrolment_tokens.issue(token.fleet, coordinator_key=token.coordinator_key)
    assert "unknown enrolment token" in await _refused(
        stack, _enrolment(stranger, signing.generate_private_key(), made_up)
    )

    # The token enrols one device, then it is full.
    first = f"tok-{tag}-1"
    key = signing.generate_private_key()
    await send(stack.kafka, topics.DEVICES, key=first, message=_enrolment(first, key, token))
    device = await eventually(lambda: device_or_none(client, first))
    assert device["fleet"] == token.fleet
    assert "has enrolled its 1 devices" in await _refused(
        stack, _enrolment(f"tok-{tag}-2", signing.generate_private_key(), token)
    )

    # The enrolled device re-enrols without a token: refused, the device as it was.
    bare = signing.sign_enrolment(
        _enrolment(first, key, token, privacy=PrivacyLevel.NONE).model_copy(
            update={"enrolment_token_id": None, "token_signature": None}
        ),
        key,
    )
    assert "needs an enrolment token" in await _refused(stack, bare)
    assert (await _device(client, first))["privacy_level"] == "high"

    # Revoked: the listing says so, and the enrolled device may no longer re-enrol with it.
    await client.revoke_enrolment_token(str(token.token_id))

    async def revoked() -> dict[str, Any] | None:
        for listed in await client.list_enrolment_tokens():
            if listed["token_id"] == str(token.token_id) and listed["revoked_at"]:
                return listed
        return None

    listed = await eventually(revoked)
    assert listed["enrolled"] == 1 and listed["revoked_by"] == "pytest"
    assert "revoked" in await _refused(stack, _enrolment(first, key, token))
    assert (await _device(client, first))["status"] != "removed"


async def test_an_expired_token_enrols_nothing_whatever_sent_at_the_enrolment_claims(
    stack: Stack, client: FedEngineClient
) -> None:
    """A hostile test enrolled a device whose message claimed a sent_at 30 s before its
    token's expiry, sent after it. Expiry is the registry's time now, never the message's."""
    # Prepare: a token (issued as the gateway issues it) that expired 10 s ago.
    tag = uuid.uuid4().hex[:8]
    token = enrolment_tokens.issue(
        f"exp-{tag}", coordinator_key=bytes.fromhex(stack.coordinator_public_key)
    )
    expiry = datetime.now(UTC) - timedelta(seconds=10)
    issued = EnrolmentTokenIssued(
        producer="gateway",
        token_id=token.token_id,
        fleet=token.fleet,
        public_key=token.public_key,
        expires_at=expiry,
        max_devices=5,
        issued_by="pytest",
    )
    await send(
        stack.kafka,
        topics.DEVICES,
        key=str(token.token_id),
        message=issued,
        signer=stack.signer("gateway"),
    )
    await eventually(lambda: _listed(client, str(token.token_id)), timeout_s=60)
    device_id = f"exp-{tag}-1"
    backdated = _enrolment(
        device_id, signing.generate_private_key(), token, sent_at=expiry - timedelta(seconds=30)
    )

    # Execute / Assert
    assert "expired" in await _refused(stack, backdated)
    assert await device_or_none(client, device_id) is None


async def _listed(client: FedEngineClient, token_id: str) -> dict[str, Any] | None:
    for listed in await client.list_enrolment_tokens():
        if listed["token_id"] == token_id:
            return listed
    return None
