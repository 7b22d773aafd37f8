"""Enrolment rules: a device's identity cannot be taken over by whoever writes to fed.devices,
and nobody enrols a device without an operator's token for its fleet."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import enrolment_tokens, signing
from fedcommon.enrolment_tokens import EnrolmentToken
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import DeviceEnrolled, DeviceType, PrivacyLevel
from fedengine_registry.core.enrolment import Enrolled, Token, check_enrolment, check_key

THEN = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
OLD = signing.generate_private_key()
NEW = signing.generate_private_key()
TOKEN = enrolment_tokens.issue("f1", coordinator_key=bytes(32))
OTHER_TOKEN = enrolment_tokens.issue("f1", coordinator_key=bytes(32))


def registered(token: EnrolmentToken = TOKEN, **changes: object) -> Token:
    """What the registry holds of ``token``: valid for a week, room for 10 devices."""
    held = Token(
        fleet=token.fleet,
        public_key=token.public_key,
        expires_at=THEN + timedelta(days=7),
        max_devices=10,
        revoked=False,
        enrolled=3,
    )
    return replace(held, **changes)  # type: ignore[arg-type]


def enrolment(
    key: Ed25519PrivateKey = NEW,
    *,
    at: datetime = THEN,
    signed_by: Ed25519PrivateKey | None = None,
    token: EnrolmentToken = TOKEN,
) -> DeviceEnrolled:
    public = signing.public_key_bytes(key)
    signature = None
    if signed_by is not None:
        signature = signed_by.sign(
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
    return enrolment_tokens.sign_enrolment(message, device_key=key, token=token)


def held(status: str = "online", key: Ed25519PrivateKey = OLD) -> Enrolled:
    return Enrolled(status, signing.public_key_bytes(key), THEN - timedelta(hours=1))


def check(
    message: DeviceEnrolled,
    existing: Enrolled | None = None,
    *,
    by_operator: bool = False,
    token: Token | None = None,
) -> None:
    check_enrolment(
        message,
        existing=existing,
        by_operator=by_operator,
        token=registered() if token is None else token,
        now=THEN + timedelta(minutes=1),
    )


def test_a_new_device_and_a_newer_enrolment_with_the_same_key_are_accepted() -> None:
    check(enrolment())
    check(enrolment(OLD), held())


def test_a_key_changes_with_the_old_keys_signature_or_by_an_operator() -> None:
    check(enrolment(signed_by=OLD), held())
    check(enrolment(), held(), by_operator=True)


@pytest.mark.parametrize(
    ("message", "existing", "reason"),
    [
        (enrolment(), held(), "changes only with its old key"),
        (enrolment(signed_by=NEW), held(), "bad signature"),  # signed by the new key only
        (enrolment(OLD), held("removed"), "only an operator can restore"),
        (enrolment(OLD, at=THEN - timedelta(hours=2)), held(), "not newer"),
    ],
    ids=["unsigned-new-key", "new-key-only", "removed", "replayed-older"],
)
def test_takeovers_are_refused(message: DeviceEnrolled, existing: Enrolled, reason: str) -> None:
    with pytest.raises(ProtocolViolation, match=reason):
        check(message, existing)


def test_an_operator_cannot_enrol_a_removed_device_back_either() -> None:
    with pytest.raises(ProtocolViolation, match="restore"):
        check(enrolment(), held("removed"), by_operator=True)


def test_an_enrolment_must_be_signed_by_the_key_it_enrols() -> None:
    unsigned = enrolment().model_copy(update={"signature": None})
    relabelled = enrolment().model_copy(update={"privacy_level": PrivacyLevel.NONE})

    with pytest.raises(ProtocolViolation, match="signed by the key it enrols"):
        check(unsigned)
    with pytest.raises(ProtocolViolation, match="bad signature"):
        check(relabelled)
    check(unsigned, by_operator=True)  # an operator, through the gateway


def _without_token() -> DeviceEnrolled:
    message = enrolment().model_copy(
        update={"enrolment_token_id": None, "token_signature": None, "fleet": None}
    )
    return signing.sign_enrolment(message, NEW)


def _moved_to(fleet: str) -> DeviceEnrolled:
    """Signed by both keys, but naming another fleet than the token's."""
    token = enrolment_tokens.EnrolmentToken(TOKEN.token_id, fleet, TOKEN.key, bytes(32))
    return enrolment(token=token)


@pytest.mark.parametrize(
    ("message", "token", "reason"),
    [
        (_without_token(), registered(), "needs an enrolment token"),
        (enrolment(token=OTHER_TOKEN), None, "unknown enrolment token"),
        (enrolment(), registered(revoked=True), "revoked"),
        (enrolment(), registered(expires_at=THEN - timedelta(seconds=1)), "expired"),
        (enrolment(), registered(enrolled=10), "has enrolled its 10 devices"),
        (enrolment(token=OTHER_TOKEN), registered(OTHER_TOKEN, fleet="f2"), "for fleet 'f2'"),
        (_moved_to("f9"), registered(), "for fleet 'f1', not 'f9'"),
        # A token's signature made with another token's key.
        (enrolment(token=OTHER_TOKEN), registered(TOKEN), "bad signature"),
        (enrolment(at=THEN - timedelta(days=2)), registered(), "within a day"),
        (enrolment(at=THEN + timedelta(hours=1)), registered(), "within a day"),
    ],
    ids=[
        "none",
        "unknown",
        "revoked",
        "expired",
        "full",
        "other-fleet",
        "relabelled-fleet",
        "forged",
        "backdated",
        "future",
    ],
)
def test_a_device_enrols_itself_only_with_a_valid_token_for_its_fleet(
    message: DeviceEnrolled, token: Token | None, reason: str
) -> None:
    with pytest.raises(ProtocolViolation, match=reason):
        check_enrolment(
            message,
            existing=None,
            by_operator=False,
            token=token,
            now=THEN + timedelta(minutes=1),
        )


@pytest.mark.parametrize(
    ("sent_before_expiry_s", "handled_after_expiry_s"),
    [(30, 1), (30, 0), (85_000, 600)],
    ids=["sent-30s-before-handled-1s-after", "handled-at-expiry", "backdated-a-day"],
)
def test_expiry_is_judged_at_the_registrys_time_not_the_claimed_sent_at(
    sent_before_expiry_s: int, handled_after_expiry_s: int
) -> None:
    # Prepare: a hostile test enrolled a device whose message claimed a sent_at 30 s before
    # its token's expiry, after the expiry (the freshness window allows a day of backdating).
    expiry = THEN + timedelta(hours=1)
    message = enrolment(at=expiry - timedelta(seconds=sent_before_expiry_s))

    # Execute / Assert
    with pytest.raises(ProtocolViolation, match="expired"):
        check_enrolment(
            message,
            existing=None,
            by_operator=False,
            token=registered(expires_at=expiry),
            now=expiry + timedelta(seconds=handled_after_expiry_s),
        )


def test_an_enrolment_handled_before_expiry_is_admitted_whatever_it_claims() -> None:
    expiry = THEN + timedelta(hours=1)
    # (check_enrolment raises for a refusal and returns None for an admission)
    admitted = check_enrolment(
        enrolment(at=expiry - timedelta(seconds=30)),
        existing=None,
        by_operator=False,
        token=registered(expires_at=expiry),
        now=expiry - timedelta(seconds=1),
    )
    assert admitted is None


def test_an_unknown_token_is_refused_even_for_an_existing_device() -> None:
    with pytest.raises(ProtocolViolation, match="unknown enrolment token"):
        check_enrolment(enrolment(OLD), existing=held(), by_operator=False, token=None, now=THEN)


def test_an_operator_needs_no_token() -> None:
    check_enrolment(_without_token(), existing=None, by_operator=True, token=None, now=THEN)


# The identity point (R = identity, S = 0 "verifies" any payload under it, in OpenSSL), the
# all-zero key (order 4), a point of order 8, and the identity in a non-canonical encoding.
WEAK_KEYS = [
    bytes([1]) + bytes(31),
    bytes(32),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes([0xEE]) + b"\xff" * 30 + b"\x7f",
]
FORGED = bytes([1]) + bytes(63)


def _weak_enrolment(weak: bytes, **fields: object) -> DeviceEnrolled:
    """An enrolment of ``weak`` "signed" by it (the signature OpenSSL believes for the identity)
    and by a real token, as a hostile device would send it."""
    message = DeviceEnrolled(
        producer="device",
        device_id="d1",
        device_name="d1",
        device_type=DeviceType.MOBILE,
        public_key=weak,
        sent_at=THEN,
        fleet=TOKEN.fleet,
        enrolment_token_id=TOKEN.token_id,
        **fields,  # type: ignore[arg-type]
    )
    payload = signing.enrolment_payload(message)
    return message.model_copy(
        update={"signature": FORGED, "token_signature": TOKEN.key.sign(payload)}
    )


@pytest.mark.parametrize("weak", WEAK_KEYS, ids=lambda k: k.hex()[:6])
def test_a_key_that_proves_nothing_is_never_enrolled(weak: bytes) -> None:
    # By a device with a token, by an operator, as a new device or as a key change.
    for by_operator in (False, True):
        for existing in (None, held()):
            with pytest.raises(ProtocolViolation, match=r"public key of device d1 .*(small|canon)"):
                check(_weak_enrolment(weak), existing, by_operator=by_operator)


def test_a_device_whose_stored_key_is_weak_cannot_sign_a_key_change_away() -> None:
    # A key stored before enrolment checked for this: its "signature" hands nothing over.
    stored = Enrolled("online", bytes([1]) + bytes(31), THEN - timedelta(hours=1))
    message = enrolment().model_copy(update={"key_change_signature": FORGED})
    message = enrolment_tokens.sign_enrolment(message, device_key=NEW, token=TOKEN)
    with pytest.raises(ProtocolViolation, match="small order"):
        check(message, stored)


def test_a_token_with_a_weak_key_is_refused() -> None:
    for weak in WEAK_KEYS:
        with pytest.raises(ProtocolViolation, match="enrolment token t1"):
            check_key(weak, what="enrolment token t1")
    check_key(TOKEN.public_key, what="enrolment token t1")
