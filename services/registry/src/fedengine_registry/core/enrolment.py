"""Enrolment rules: who may enrol a device, change its key, or bring it back.

A device's identity cannot be taken over by anyone who can write to fed.devices:
- an enrolment is signed by the key it enrols (proof of possession, covering every field),
  unless an operator enrols the device through the gateway;
- its key changes only with a signature by the old key, or by an operator (an enrolment the
  gateway vouches for as a service);
- a removed device stays removed until an operator restores it;
- an enrolment older than the one in force (a replay) changes nothing, so it cannot downgrade
  the device (its privacy level, say).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fedcommon import signing
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import DeviceEnrolled, DeviceStatus


@dataclass(frozen=True)
class Enrolled:
    """What the registry holds of an enrolled device, as far as these rules need it."""

    status: str
    public_key: bytes | None
    enrolled_sent_at: datetime | None


def check_enrolment(
    message: DeviceEnrolled, *, existing: Enrolled | None, by_operator: bool
) -> None:
    """Raise ``ProtocolViolation`` unless ``message`` may (re-)enrol its device."""
    if not by_operator:
        if message.public_key is None or message.signature is None:
            raise ProtocolViolation(
                f"enrolment of {message.device_id} must be signed by the key it enrols"
            )
        signing.verify(
            public_key=message.public_key,
            signature=message.signature,
            payload=signing.enrolment_payload(message),
        )
    if existing is None:
        return
    if existing.status == DeviceStatus.REMOVED:
        raise ProtocolViolation(
            f"device {message.device_id} was removed; only an operator can restore it"
        )
    if existing.enrolled_sent_at is not None and message.sent_at <= existing.enrolled_sent_at:
        raise ProtocolViolation(
            f"enrolment of {message.device_id} is not newer than the one in force"
        )
    new_key = message.public_key
    if new_key is None or new_key == existing.public_key or by_operator:
        return
    if existing.public_key is None or message.key_change_signature is None:
        raise ProtocolViolation(
            f"the key of {message.device_id} changes only with its old key's signature "
            "or by an operator"
        )
    signing.verify(
        public_key=existing.public_key,
        signature=message.key_change_signature,
        payload=signing.key_change_payload(
            device_id=message.device_id,
            new_public_key=new_key,
            sent_at_us=int(message.sent_at.timestamp() * 1_000_000),
        ),
    )
