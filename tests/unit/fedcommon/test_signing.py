from __future__ import annotations

import uuid

import pytest

from fedcommon import signing
from fedcommon.errors import ProtocolViolation


def payload(**changes: object) -> bytes:
    fields: dict[str, object] = dict(
        task_id=uuid.UUID(int=1),
        round_id=uuid.UUID(int=2),
        device_id="d",
        round_number=1,
        model_version=0,
        num_examples=5,
        update=b"abc",
    )
    fields.update(changes)
    return signing.update_payload(**fields)  # type: ignore[arg-type]


def test_signature_verifies_with_the_signers_public_key() -> None:
    key = signing.generate_private_key()

    signing.verify(
        public_key=signing.public_key_bytes(key), signature=key.sign(payload()), payload=payload()
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"round_id": uuid.UUID(int=3)},
        {"device_id": "e"},
        {"num_examples": 6},
        {"update": b"abd"},
        {"model_version": 1},
        {"task_id": uuid.UUID(int=9)},
    ],
)
def test_any_changed_field_breaks_the_signature(changes: dict[str, object]) -> None:
    key = signing.generate_private_key()

    with pytest.raises(ProtocolViolation):
        signing.verify(
            public_key=signing.public_key_bytes(key),
            signature=key.sign(payload()),
            payload=payload(**changes),
        )


def test_another_devices_key_does_not_verify() -> None:
    signer, other = signing.generate_private_key(), signing.generate_private_key()

    with pytest.raises(ProtocolViolation):
        signing.verify(
            public_key=signing.public_key_bytes(other),
            signature=signer.sign(payload()),
            payload=payload(),
        )


def test_keys_round_trip_through_raw_bytes_and_bad_keys_are_refused() -> None:
    key = signing.generate_private_key()
    again = signing.private_key_from_bytes(signing.private_key_to_bytes(key))

    assert signing.public_key_bytes(again) == signing.public_key_bytes(key)
    with pytest.raises(ProtocolViolation):
        signing.verify(public_key=b"short", signature=b"x" * 64, payload=b"p")
