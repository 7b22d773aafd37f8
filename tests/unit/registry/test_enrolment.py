"""Enrolment rules: a device's identity cannot be taken over by whoever writes to fed.devices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import signing
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import DeviceEnrolled, DeviceType, PrivacyLevel
from fedengine_registry.core.enrolment import Enrolled, check_enrolment

THEN = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
OLD = signing.generate_private_key()
NEW = signing.generate_private_key()


def enrolment(
    key: object = NEW, *, at: datetime = THEN, signed_by: object = None
) -> DeviceEnrolled:
    public = signing.public_key_bytes(key)  # type: ignore[arg-type]
    signature = None
    if signed_by is not None:
        signature = signed_by.sign(  # type: ignore[attr-defined]
            signing.key_change_payload(
                device_id="d1", new_public_key=public, sent_at_us=int(at.timestamp() * 1e6)
            )
        )
    message = DeviceEnrolled(
        producer="device",
        device_id="d1",
        device_name="d1",
        device_type=DeviceType.MOBILE,
        privacy_level=PrivacyLevel.HIGH,
        public_key=public,
        sent_at=at,
        key_change_signature=signature,
    )
    return signing.sign_enrolment(message, key)


def held(status: str = "online", key: Ed25519PrivateKey = OLD) -> Enrolled:
    return Enrolled(status, signing.public_key_bytes(key), THEN - timedelta(days=1))


def test_a_new_device_and_a_newer_enrolment_with_the_same_key_are_accepted() -> None:
    check_enrolment(enrolment(), existing=None, by_operator=False)
    check_enrolment(enrolment(OLD), existing=held(), by_operator=False)


def test_a_key_changes_with_the_old_keys_signature_or_by_an_operator() -> None:
    check_enrolment(enrolment(signed_by=OLD), existing=held(), by_operator=False)
    check_enrolment(enrolment(), existing=held(), by_operator=True)


@pytest.mark.parametrize(
    ("message", "existing", "reason"),
    [
        (enrolment(), held(), "changes only with its old key"),
        (enrolment(signed_by=NEW), held(), "bad signature"),  # signed by the new key only
        (enrolment(OLD), held("removed"), "only an operator can restore"),
        (enrolment(OLD, at=THEN - timedelta(days=2)), held(), "not newer"),
    ],
    ids=["unsigned-new-key", "new-key-only", "removed", "replayed-older"],
)
def test_takeovers_are_refused(message: DeviceEnrolled, existing: Enrolled, reason: str) -> None:
    with pytest.raises(ProtocolViolation, match=reason):
        check_enrolment(message, existing=existing, by_operator=False)


def test_an_operator_cannot_enrol_a_removed_device_back_either() -> None:
    with pytest.raises(ProtocolViolation, match="restore"):
        check_enrolment(enrolment(), existing=held("removed"), by_operator=True)


def test_an_enrolment_must_be_signed_by_the_key_it_enrols() -> None:
    unsigned = enrolment().model_copy(update={"signature": None})
    relabelled = enrolment().model_copy(update={"privacy_level": PrivacyLevel.NONE})

    with pytest.raises(ProtocolViolation, match="signed by the key it enrols"):
        check_enrolment(unsigned, existing=None, by_operator=False)
    with pytest.raises(ProtocolViolation, match="bad signature"):
        check_enrolment(relabelled, existing=None, by_operator=False)
    check_enrolment(unsigned, existing=None, by_operator=True)  # an operator, through the gateway
