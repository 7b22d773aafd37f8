"""Only a service can speak for a service: forged service messages of every type, on every topic a
service consumes, are refused, dead-lettered as untrusted and counted, and change nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiokafka import ConsumerRecord

from fedcommon import codec, signing, topics, trust
from fedcommon.messages.v1 import (
    DeviceRemoved,
    EnrolmentTokenIssued,
    Envelope,
    TaskCreateRequested,
    TaskSpec,
)
from fedengine.sdk import FedEngineClient
from tests.integration.conftest import Stack
from tests.integration.helpers import device_or_none, metric_total
from tests.integration.kafka_tools import find_records, headers_of, send_raw
from tests.unit.fedcommon.examples import EXAMPLES

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Every (topic, type) a service consumes that only a service may send.
CONSUMED = {topics.DEVICES, topics.TASKS, topics.DEVICE_COMMANDS, topics.UPDATES, topics.ROUNDS}
SERVICE_ONLY = sorted(
    (base, kind)
    for (base, kind), allowed in trust.MATRIX.items()
    if base in CONSUMED and trust.DEVICE not in allowed
)
# "null_headers": the signer and signature headers present with no value (Kafka allows it;
# found by a review to crash every consumer before the check refused it).
FORGERIES = ("unsigned", "device_key", "wrong_service", "replayed", "null_headers")


def _example(kind: str) -> Envelope:
    return next(e for e in EXAMPLES if e.type == kind)


def _forge(
    stack: Stack, base: str, kind: str, how: str, key: bytes
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Return the value and headers of a forged ``kind`` message on ``base``."""
    allowed = sorted(trust.MATRIX[(base, kind)])
    message = _example(kind).model_copy(
        update={"message_id": uuid.uuid4(), "sent_at": datetime.now(UTC)}
    )
    if how == "replayed":  # rightly signed, but older than the deduplication window
        message = message.model_copy(update={"sent_at": datetime.now(UTC) - timedelta(days=2)})
    value = codec.encode(message)
    topic = topics.topic_name(stack.kafka.topic_prefix, base)
    if how == "unsigned":
        return value, []
    if how == "null_headers":
        return value, [(trust.SIGNER_HEADER, None), (trust.SIGNATURE_HEADER, None)]  # type: ignore[list-item]
    if how == "device_key":  # claims to be the right service, signed with a device's key
        signer = trust.Signer(allowed[0], signing.generate_private_key())
    elif how == "wrong_service":
        signer = stack.signer(next(s for s in trust.SERVICES if s not in allowed))
    else:
        signer = stack.signer(allowed[0])
    return value, signer.headers(topic, key, value)


async def test_forged_service_messages_of_every_type_are_refused_and_counted(
    stack: Stack,
) -> None:
    tag = uuid.uuid4().hex[:8]
    expected: dict[bytes, tuple[str, str, str]] = {}
    for base, kind in SERVICE_ONLY:
        for how in FORGERIES:
            key = f"forged-{tag}-{kind}-{how}".encode()
            value, headers = _forge(stack, base, kind, how, key)
            await send_raw(stack.kafka, base, key=key, value=value, headers=headers)
            expected[key] = (base, kind, how)

    letters = await find_records(
        stack.kafka,
        topics.DLQ,
        [_keyed(key) for key in expected],
        timeout_s=60,
    )

    # 6 task commands, a model upload, removal, restore, token issue and revocation, train and
    # evaluate requests, a SecAgg+ delivery, round.opened, 2 round results
    assert len(SERVICE_ONLY) == 17
    assert len(letters) == len(SERVICE_ONLY) * len(FORGERIES)
    for letter in letters:
        base, kind, how = expected[letter.key]
        headers = headers_of(letter)
        assert headers["error_type"] == "untrusted", (base, kind, how, headers)
        assert headers["original_topic"] == topics.topic_name(stack.kafka.topic_prefix, base)
        reason = headers["error"]
        if how in ("unsigned", "null_headers"):
            assert "must be signed" in reason
        elif how == "device_key":
            assert "bad signature" in reason
        elif how == "wrong_service":
            assert "may not send" in reason
        else:
            assert "replay window" in reason
    assert await metric_total(stack.stack.processes, "fedengine_untrusted_total") >= len(letters)


def _keyed(key: bytes) -> Callable[[ConsumerRecord], bool]:
    return lambda record: record.key == key


async def test_forged_commands_change_nothing(
    stack: Stack, client: FedEngineClient, fleet: str
) -> None:
    task_id = uuid.uuid4()
    create = TaskCreateRequested(
        producer="gateway", task_id=task_id, spec=TaskSpec(task_name="forged"), issued_by="eve"
    )
    victim = f"{fleet}-0003"
    # The victim must be there before the forgery (run first, this test would find the fleet
    # still enrolling and blame the forgery).
    await client.wait_for_devices(8, prefix=f"{fleet}-")
    remove = DeviceRemoved(producer="gateway", device_id=victim, issued_by="eve")
    # A token of her own, to enrol devices of her own.
    token = EnrolmentTokenIssued(
        producer="gateway",
        token_id=uuid.uuid4(),
        fleet="eve",
        public_key=signing.public_key_bytes(signing.generate_private_key()),
        expires_at=datetime.now(UTC) + timedelta(days=1),
        max_devices=1000,
        issued_by="eve",
    )
    eve = trust.Signer("gateway", signing.generate_private_key())
    for base, key, message in (
        (topics.TASKS, str(task_id), create),
        (topics.DEVICES, victim, remove),
        (topics.DEVICES, str(token.token_id), token),
    ):
        value = codec.encode(message)
        topic = topics.topic_name(stack.kafka.topic_prefix, base)
        await send_raw(
            stack.kafka,
            base,
            key=key.encode(),
            value=value,
            headers=eve.headers(topic, key.encode(), value),
        )

    await find_records(
        stack.kafka,
        topics.DLQ,
        [
            _keyed(str(task_id).encode()),
            _keyed(victim.encode()),
            _keyed(str(token.token_id).encode()),
        ],
        timeout_s=30,
    )
    device = await device_or_none(client, victim)
    assert device is not None and device["status"] == "online"
    async with httpx.AsyncClient(base_url=stack.stack.gateway_url) as http:
        response = await http.get(
            f"/api/federated/tasks/{task_id}",
            headers={"Authorization": f"Bearer {stack.token()}"},
        )
        assert response.status_code == 404
        response = await http.get(
            f"/api/federated/enrolment-tokens/{token.token_id}",
            headers={"Authorization": f"Bearer {stack.token()}"},
        )
        assert response.status_code == 404
