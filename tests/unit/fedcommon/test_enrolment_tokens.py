"""Enrolment tokens: round trip, damage is named without echoing the key, signatures bind."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcommon import codec, enrolment_tokens, signing
from fedcommon.enrolment_tokens import EnrolmentToken, InvalidToken
from fedcommon.messages.v1 import DeviceEnrolled, DeviceType

COORDINATOR = signing.public_key_bytes(signing.generate_private_key())
AGGREGATOR = signing.public_key_bytes(signing.generate_private_key())


def test_a_token_round_trips_through_its_text() -> None:
    token = enrolment_tokens.issue("fleet-1", coordinator_key=COORDINATOR)

    text = token.encode()
    again = EnrolmentToken.decode(text)

    assert text.startswith("fet1.")
    assert (again.token_id, again.fleet, again.coordinator_key) == (
        token.token_id,
        "fleet-1",
        COORDINATOR,
    )
    assert again.public_key == token.public_key
    assert again.aggregator_key is None


def test_the_aggregator_key_round_trips_under_its_json_key() -> None:
    token = enrolment_tokens.issue("f", coordinator_key=COORDINATOR, aggregator_key=AGGREGATOR)

    text = token.encode()
    again = EnrolmentToken.decode(text)

    document = json.loads(base64.urlsafe_b64decode(text[5:] + "=="))
    assert document["aggregator"] == AGGREGATOR.hex()
    assert (again.coordinator_key, again.aggregator_key) == (COORDINATOR, AGGREGATOR)


def test_a_token_issued_before_the_aggregator_key_still_decodes_without_one() -> None:
    # Prepare: a token as issued before secure aggregation: no "aggregator" key at all.
    old = enrolment_tokens.issue("f", coordinator_key=COORDINATOR)
    document = json.loads(base64.urlsafe_b64decode(old.encode()[5:] + "=="))
    assert "aggregator" not in document

    # Execute
    again = EnrolmentToken.decode(_encoded(document))

    # Assert
    assert again.aggregator_key is None and again.token_id == old.token_id


def test_a_small_order_or_damaged_aggregator_key_is_refused_by_name() -> None:
    good = enrolment_tokens.issue("f", coordinator_key=COORDINATOR, aggregator_key=AGGREGATOR)
    document = json.loads(base64.urlsafe_b64decode(good.encode()[5:] + "=="))
    identity = (1).to_bytes(32, "little")  # the identity point: small order
    with pytest.raises(InvalidToken, match="aggregator key"):
        EnrolmentToken.decode(_encoded({**document, "aggregator": identity.hex()}))
    with pytest.raises(InvalidToken, match="aggregator key"):
        EnrolmentToken.decode(_encoded({**document, "aggregator": "00" * 32}))
    for damaged in ("00" * 31, "zz", 7, ["00"]):
        with pytest.raises(InvalidToken, match=r"damaged|aggregator key"):
            EnrolmentToken.decode(_encoded({**document, "aggregator": damaged}))


def _encoded(document: dict[str, object]) -> str:
    raw = json.dumps(document).encode()
    return "fet1." + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_damaged_tokens_are_refused_without_echoing_them() -> None:
    good = enrolment_tokens.issue("f", coordinator_key=COORDINATOR)
    document = json.loads(base64.urlsafe_b64decode(good.encode()[5:] + "=="))
    cases = [
        "",
        "x" * 5000,
        "fet2." + good.encode()[5:],
        good.encode()[:-7],
        _encoded({**document, "fleet": "bad fleet/\x00"}),
        _encoded({**document, "key": "00" * 31}),
        _encoded({**document, "coordinator": "00" * 31}),
        _encoded({k: v for k, v in document.items() if k != "id"}),
        "fet1.////",
    ]
    for text in cases:
        with pytest.raises(InvalidToken) as caught:
            EnrolmentToken.decode(text)
        assert document["key"] not in str(caught.value)


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_any_body_decodes_to_a_whole_token_or_is_refused_as_invalid(raw: bytes) -> None:
    try:
        token = EnrolmentToken.decode("fet1." + base64.urlsafe_b64encode(raw).decode())
    except InvalidToken:
        return
    assert len(token.coordinator_key) == 32 and len(token.public_key) == 32
    assert token.aggregator_key is None or len(token.aggregator_key) == 32


def test_both_signatures_cover_the_fleet_and_the_token_id() -> None:
    token = enrolment_tokens.issue("f", coordinator_key=COORDINATOR)
    device = signing.generate_private_key()
    message = enrolment_tokens.sign_enrolment(
        DeviceEnrolled(
            producer="d",
            device_id="d1",
            device_name="d1",
            device_type=DeviceType.IOT,
            public_key=signing.public_key_bytes(device),
        ),
        device_key=device,
        token=token,
    )
    assert message.fleet == "f" and message.enrolment_token_id == token.token_id
    assert message.signature is not None and message.token_signature is not None
    payload = signing.enrolment_payload(message)
    signing.verify(public_key=token.public_key, signature=message.token_signature, payload=payload)
    signing.verify(
        public_key=signing.public_key_bytes(device), signature=message.signature, payload=payload
    )
    moved = message.model_copy(update={"fleet": "g"})
    with pytest.raises(Exception, match="bad signature"):
        signing.verify(
            public_key=token.public_key,
            signature=message.token_signature,
            payload=signing.enrolment_payload(moved),
        )


class _NewerDeviceEnrolled(DeviceEnrolled):
    """DeviceEnrolled as a later v1 would have it: one more optional field (style.md rule 7)."""

    attestation: bytes | None = None


def test_an_enrolment_from_a_newer_device_verifies_at_an_older_registry() -> None:
    # Prepare: a device on a later v1 signs its enrolment, which carries the new field unset.
    device_key = signing.generate_private_key()
    token = enrolment_tokens.issue("f", coordinator_key=b"\x01" * 32)
    newer = enrolment_tokens.sign_enrolment(
        _NewerDeviceEnrolled(
            producer="device",
            device_id="d-1",
            device_name="d",
            device_type=DeviceType.IOT,
            public_key=signing.public_key_bytes(device_key),
        ),
        device_key=device_key,
        token=token,
    )

    # Execute: today's registry decodes it (ignoring the field, as v1 promises) and checks it
    # over the fields as sent, as the registry's handler does.
    raw = codec.encode(newer)
    received = codec.decode(raw)
    assert isinstance(received, DeviceEnrolled) and received.signature is not None
    assert received.token_signature is not None
    payload = signing.enrolment_payload(codec.fields_of(raw))

    # Assert: both signatures hold (else every such enrolment is dead-lettered), and they would
    # not over this version's own re-encoding, which drops the field.
    signing.verify(
        public_key=signing.public_key_bytes(device_key),
        signature=received.signature,
        payload=payload,
    )
    signing.verify(public_key=token.public_key, signature=received.token_signature, payload=payload)
    assert signing.enrolment_payload(received) != payload


def test_an_enrolment_from_an_older_device_verifies_the_same_way() -> None:
    device_key = signing.generate_private_key()
    token = enrolment_tokens.issue("f", coordinator_key=b"\x01" * 32)
    unsigned = DeviceEnrolled(
        producer="device",
        device_id="d-1",
        device_name="d",
        device_type=DeviceType.IOT,
        public_key=signing.public_key_bytes(device_key),
        fleet="f",
        enrolment_token_id=token.token_id,
    )
    # An older device never knew the optional key_change_signature: it signs and sends without.
    fields = {
        k: v
        for k, v in unsigned.model_dump(mode="python").items()
        if k not in ("key_change_signature", "signature", "token_signature")
    }
    payload = signing.enrolment_payload(fields)
    raw = codec.canonical(
        {
            **fields,
            "signature": device_key.sign(payload),
            "token_signature": token.key.sign(payload),
        }
    )

    received = codec.decode(raw)

    assert isinstance(received, DeviceEnrolled) and received.signature is not None
    signing.verify(
        public_key=signing.public_key_bytes(device_key),
        signature=received.signature,
        payload=signing.enrolment_payload(codec.fields_of(raw)),
    )
