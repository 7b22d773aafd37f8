"""Keys that prove nothing are refused (issue 15): a small-order or non-canonical Ed25519 key is
never enrolled, over REST or over Kafka, and a key stored before that check speaks for no
device: a heartbeat "signed" by it is dead-lettered. The registry carries on after each."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcommon import signing, topics
from fedcommon.messages.v1 import DeviceEnrolled, DeviceType, HeartbeatSent
from fedengine.sdk import FedEngineClient, FedEngineError
from tests.integration.conftest import Stack
from tests.integration.helpers import device_or_none, eventually
from tests.integration.kafka_tools import enrol, find_records, headers_of, send

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

IDENTITY = bytes([1]) + bytes(31)
ZERO = bytes(32)
# Under the identity key, R = identity and S = 0 verify for every payload (in OpenSSL); under
# the all-zero key (order 4), the all-zero signature verifies for about one payload in four.
FORGERY = {IDENTITY: IDENTITY + bytes(32), ZERO: bytes(64)}


def _believed_by_openssl(public_key: bytes, signature: bytes, payload: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def _forge(make: Callable[[], tuple[bytes, Any]], public_key: bytes) -> Any:
    """Call ``make`` (returning a payload and what carries it) until OpenSSL believes the forged
    signature over the payload: what the hostile test sent, before the fix."""
    for _ in range(200):
        payload, carrier = make()
        if _believed_by_openssl(public_key, FORGERY[public_key], payload):
            return carrier
    raise AssertionError("no payload the forgery verifies for")


async def _dead_letter(stack: Stack, device_id: str, message_id: uuid.UUID) -> dict[str, str]:
    (letter,) = await find_records(
        stack.kafka,
        topics.DLQ,
        [lambda r: r.key == device_id.encode() and str(message_id).encode() in (r.value or b"")],
    )
    return headers_of(letter)


async def _still_working(stack: Stack, client: FedEngineClient) -> None:
    """A sound device enrols after the refusals: the registry is still consuming."""
    device_id = f"sound-{uuid.uuid4().hex[:8]}"
    await enrol(stack.kafka, device_id, token=stack.enrolment_token)
    await eventually(lambda: device_or_none(client, device_id))


@pytest.mark.parametrize("weak", [IDENTITY, ZERO], ids=["identity", "all-zero"])
async def test_rest_enrolment_of_a_small_order_key_is_422_naming_the_field(
    stack: Stack, client: FedEngineClient, weak: bytes
) -> None:
    def make() -> tuple[bytes, str]:
        device_id = f"weak-rest-{uuid.uuid4().hex[:8]}"
        return signing.possession_payload(device_id=device_id, public_key=weak), device_id

    # A device id for which OpenSSL believes the forged possession proof.
    device_id = _forge(make, weak)
    with pytest.raises(FedEngineError) as refused:
        await client.add_edge_device(
            device_id=device_id,
            device_name="weak",
            device_type="iot",
            public_key=weak.hex(),
            key_signature=FORGERY[weak].hex(),
        )
    assert refused.value.status_code == 422
    detail = refused.value.detail
    assert any(
        item["loc"][-1] == "public_key" and "small order" in item["msg"] for item in detail
    ), detail
    assert weak.hex() not in str(detail)  # the answer never echoes the key
    assert await device_or_none(client, device_id) is None
    await _still_working(stack, client)


@pytest.mark.parametrize("weak", [IDENTITY, ZERO], ids=["identity", "all-zero"])
@pytest.mark.parametrize("by", ["device", "gateway"])
async def test_kafka_enrolment_of_a_small_order_key_is_refused_and_not_registered(
    stack: Stack, client: FedEngineClient, weak: bytes, by: str
) -> None:
    device_id = f"weak-kafka-{uuid.uuid4().hex[:8]}"
    token = stack.enrolment_token

    def make() -> tuple[bytes, DeviceEnrolled]:
        message = DeviceEnrolled(
            producer="pytest",
            device_id=device_id,
            device_name="weak",
            device_type=DeviceType.IOT,
            public_key=weak,
            fleet=token.fleet,
            enrolment_token_id=token.token_id,
        )
        payload = signing.enrolment_payload(message)
        return payload, message.model_copy(
            update={"signature": FORGERY[weak], "token_signature": token.key.sign(payload)}
        )

    # A device with a real token and a forged self-signature, or an operator's enrolment
    # vouched for by the gateway (which needs no self-signature): both refused.
    message = _forge(make, weak)
    signer = stack.signer("gateway") if by == "gateway" else None
    await send(stack.kafka, topics.DEVICES, key=device_id, message=message, signer=signer)
    headers = await _dead_letter(stack, device_id, message.message_id)
    assert headers["error_type"] == "ProtocolViolation", headers
    assert f"public key of device {device_id}" in headers["error"]
    assert "small order" in headers["error"]
    assert weak.hex() not in headers["error"]
    assert await device_or_none(client, device_id) is None
    await _still_working(stack, client)


async def _heartbeat_sequence(db: psycopg.AsyncConnection, device_id: str) -> int:
    cursor = await db.execute(
        "SELECT heartbeat_sequence FROM registry.devices WHERE device_id = %s", (device_id,)
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_heartbeat_signed_by_a_stored_all_zero_key_is_not_accepted(
    stack: Stack, client: FedEngineClient, db: psycopg.AsyncConnection
) -> None:
    # Prepare: a device enrolled soundly, whose stored key is then replaced by the all-zero key,
    # as if it had been enrolled before the check existed.
    device_id = f"weak-hb-{uuid.uuid4().hex[:8]}"
    sound = await enrol(stack.kafka, device_id, token=stack.enrolment_token)
    await eventually(lambda: device_or_none(client, device_id))
    await db.execute(
        "UPDATE registry.devices SET public_key = %s WHERE device_id = %s", (ZERO, device_id)
    )
    before = await _heartbeat_sequence(db, device_id)
    counter = iter(range(before + 1, before + 10_000))

    def make() -> tuple[bytes, HeartbeatSent]:
        sequence, sent_at = next(counter), datetime.now(UTC)
        payload = signing.heartbeat_payload(
            device_id=device_id,
            sequence=sequence,
            sent_at_us=int(sent_at.timestamp() * 1_000_000),
        )
        return payload, HeartbeatSent(
            producer="pytest",
            device_id=device_id,
            sequence=sequence,
            sent_at=sent_at,
            signature=FORGERY[ZERO],
        )

    # Execute: the all-zero signature over a heartbeat OpenSSL believes it for.
    forged = _forge(make, ZERO)
    await send(stack.kafka, topics.DEVICES, key=device_id, message=forged)

    # Assert: dead-lettered for the key, not counted; the device's real key cannot speak for it
    # either now (the stored key is what is checked), and the registry carries on.
    headers = await _dead_letter(stack, device_id, forged.message_id)
    assert headers["error_type"] == "ProtocolViolation", headers
    assert "all zero" in headers["error"]
    assert await _heartbeat_sequence(db, device_id) == before
    assert sound is not None
    await _still_working(stack, client)
