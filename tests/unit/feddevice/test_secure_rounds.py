"""The secure-round shell with a recording sender: what goes on fed.secagg, signed, once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import codec, signing, topics
from fedcommon.messages.v1 import (
    Envelope,
    ModelArchitecture,
    SecAggDelivered,
    SecAggSubmitted,
    TrainRequested,
)
from feddevice.secagg_device import DropPolicy, submission_id
from feddevice.secure_rounds import SecureRounds
from fedprivacy.secagg import KeyAdvertisement
from tests.unit.feddevice.test_secagg_device import TASK_ID, Fleet


class BrokerDown(Exception):
    pass


@dataclass
class FakeProducer:
    """Records what is sent; ``failures`` sends fail first, as a broker outage would."""

    failures: int = 0
    sent: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise BrokerDown("broker down")
        self.sent.append((topic, value, key))


def _shell(
    producer: FakeProducer, key: Ed25519PrivateKey, policy: DropPolicy | None = None
) -> SecureRounds:
    async def send(base: str, record_key: str, message: Envelope) -> None:
        await producer.send_and_wait(
            topics.topic_name("t.", base), codec.encode(message), key=record_key.encode()
        )

    return SecureRounds(send, keys={"d-0": key}, producer="simulator", drop_policy=policy)


def _request(fleet: Fleet) -> TrainRequested:
    return TrainRequested(
        producer="coordinator",
        round_id=uuid.uuid4(),
        task_id=TASK_ID,
        device_id="d-0",
        round_number=7,
        model_version=1,
        model_sha256="0" * 64,
        deadline=datetime.now(UTC) + timedelta(minutes=1),
        model_architecture=ModelArchitecture.MLP,
        dataset="digits",
        learning_rate=0.1,
        local_epochs=1,
        batch_size=8,
        seed=0,
        secure_aggregation=fleet.assignment(0),
    )


async def _start(shell: SecureRounds, fleet: Fleet, request: TrainRequested) -> None:
    assert request.round_id is not None and request.secure_aggregation is not None
    await shell.start(
        request,
        round_id=request.round_id,
        assignment=request.secure_aggregation,
        device_id="d-0",
        num_examples=5,
        delta=[fleet.updates[0][:4].reshape(2, 2), fleet.updates[0][4:]],
    )


async def test_stage_one_goes_on_the_secagg_topic_signed_by_the_device() -> None:
    # Prepare
    fleet = Fleet(num_clients=5, degree=4)
    producer = FakeProducer()
    shell = _shell(producer, fleet.keys[0])
    request = _request(fleet)

    # Execute
    await _start(shell, fleet, request)

    # Assert: keyed by task, the deterministic id, the train request as correlation, and a
    # signature a neighbour checks with this device's identity key.
    [(topic, value, key)] = producer.sent
    message = codec.decode(value)
    assert isinstance(message, SecAggSubmitted)
    assert (topic, key) == (f"t.{topics.SECAGG}", str(TASK_ID).encode())
    assert request.round_id is not None
    assert message.message_id == submission_id(round_id=request.round_id, device_id="d-0", stage=1)
    assert (message.correlation_id, message.round_id, message.stage) == (
        request.message_id,
        request.round_id,
        1,
    )
    assert KeyAdvertisement.from_bytes(message.payload).header.sender == 0
    signing.verify(
        public_key=signing.public_key_bytes(fleet.keys[0]),
        signature=message.signature,
        payload=signing.secagg_payload(
            task_id=TASK_ID,
            round_id=request.round_id,
            device_id="d-0",
            round_number=7,
            stage=1,
            payload=message.payload,
        ),
    )


async def test_a_failed_send_is_repeated_with_the_same_message_and_then_never_again() -> None:
    # Prepare: the broker refuses the first send.
    fleet = Fleet(num_clients=5, degree=4)
    producer = FakeProducer(failures=1)
    shell = _shell(producer, fleet.keys[0])
    request = _request(fleet)
    assert request.round_id is not None

    # Execute: the record is retried, as the consume loop does after an outage.
    with pytest.raises(BrokerDown):
        await _start(shell, fleet, request)
    pending = shell.pending(request.round_id, "d-0")
    assert pending is not None
    await shell.step(pending, pending.advertise())
    await shell.step(pending, pending.advertise())

    # Assert: one message, with the bytes the first try computed.
    [(_, value, _)] = producer.sent
    sent = codec.decode(value)
    assert isinstance(sent, SecAggSubmitted)
    assert sent.message_id == submission_id(round_id=request.round_id, device_id="d-0", stage=1)


async def test_an_injected_drop_or_an_unknown_round_sends_nothing() -> None:
    fleet = Fleet(num_clients=5, degree=4)
    producer = FakeProducer()
    always = DropPolicy(probability=0.999999, stages=frozenset({1}), seed=0)
    shell = _shell(producer, fleet.keys[0], always)
    request = _request(fleet)
    assert request.round_id is not None

    await _start(shell, fleet, request)
    await shell.handle(
        SecAggDelivered(
            producer="aggregator",
            round_id=request.round_id,
            task_id=TASK_ID,
            device_id="d-0",
            round_number=7,
            stage=2,
            payload=b"",
        )
    )

    assert producer.sent == []
    assert shell.pending(request.round_id, "d-0") is None


async def test_an_update_of_the_wrong_size_keeps_the_device_out_of_the_round() -> None:
    fleet = Fleet(num_clients=5, degree=4)
    producer = FakeProducer()
    shell = _shell(producer, fleet.keys[0])
    request = _request(fleet)
    assert request.round_id is not None and request.secure_aggregation is not None

    await shell.start(
        request,
        round_id=request.round_id,
        assignment=request.secure_aggregation,
        device_id="d-0",
        num_examples=5,
        delta=[np.zeros(3, dtype=np.float32)],
    )

    assert producer.sent == [] and shell.pending(request.round_id, "d-0") is None
