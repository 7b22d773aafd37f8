"""Ed25519 identities for devices: keys as raw 32-byte encodings, signatures over fixed layouts."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcommon import codec, ed25519_keys
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import DeviceEnrolled

KEY_BYTES = 32


def generate_private_key() -> Ed25519PrivateKey:
    """Return a fresh device identity key."""
    return Ed25519PrivateKey.generate()


def private_key_from_bytes(raw: bytes) -> Ed25519PrivateKey:
    """Load a private key from its raw 32-byte encoding."""
    return Ed25519PrivateKey.from_private_bytes(raw)


def private_key_to_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """Return the raw 32-byte encoding of ``private_key``."""
    return private_key.private_bytes_raw()


def public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """Return the raw 32-byte public key that goes on the wire."""
    return private_key.public_key().public_bytes_raw()


def verify(*, public_key: bytes, signature: bytes, payload: bytes) -> None:
    """Check ``signature`` over ``payload``; raise ``ProtocolViolation`` when it does not hold.

    A key of small order or in a non-canonical encoding, and a signature whose S is not reduced,
    are refused before any verification (``fedcommon.ed25519_keys``): OpenSSL would let a
    small-order key "verify" signatures nobody made, and a key stored before enrolment checked
    for this must not speak for its device either.
    """
    try:
        ed25519_keys.check_public_key(public_key)
        ed25519_keys.check_signature(signature)
    except ed25519_keys.WeakKeyError as exc:
        raise ProtocolViolation(f"signing: {exc}") from exc
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError) as exc:
        raise ProtocolViolation("signing: bad signature") from exc


def update_payload(
    *,
    task_id: UUID,
    round_id: UUID,
    device_id: str,
    round_number: int,
    model_version: int,
    num_examples: int,
    update: bytes,
) -> bytes:
    """Return the bytes a device signs for a model update.

    Binding task, round, device, model version and example count to the update's digest makes
    a replay into another round, or a relabelled update, fail verification.
    """
    device = device_id.encode("utf-8")
    return b"".join(
        (
            b"fedengine-update-v1",
            task_id.bytes,
            round_id.bytes,
            struct.pack("<H", len(device)),
            device,
            struct.pack("<IIQ", round_number, model_version, num_examples),
            hashlib.sha256(update).digest(),
        )
    )


def decline_payload(
    *,
    task_id: UUID,
    round_id: UUID,
    device_id: str,
    round_number: int,
    model_version: int,
    reason: str,
) -> bytes:
    """Return the bytes a device signs to decline a round (it has no update, for ``reason``).

    Bound like an update to task, round, device and model version, so that a decline cannot be
    replayed into another round or forged for another device.
    """
    device = device_id.encode("utf-8")
    why = reason.encode("ascii")
    return b"".join(
        (
            b"fedengine-decline-v1",
            task_id.bytes,
            round_id.bytes,
            struct.pack("<H", len(device)),
            device,
            struct.pack("<II", round_number, model_version),
            struct.pack("<B", len(why)),
            why,
        )
    )


def evaluation_payload(
    *,
    task_id: UUID,
    evaluation_id: UUID,
    device_id: str,
    round_number: int,
    model_version: int,
    num_examples: int,
    loss: float,
    metrics: Mapping[str, float],
) -> bytes:
    """Return the bytes a device signs for its evaluation of a model version.

    Bound to task, evaluation, device and version, and covering every number it reports
    (metrics in name order, as IEEE doubles), so that neither a replay into another
    evaluation nor an altered metric verifies.
    """
    device = device_id.encode("utf-8")
    parts = [
        b"fedengine-evaluation-v1",
        task_id.bytes,
        evaluation_id.bytes,
        struct.pack("<H", len(device)),
        device,
        struct.pack("<IIQd", round_number, model_version, num_examples, loss),
        struct.pack("<B", len(metrics)),
    ]
    for name in sorted(metrics):
        encoded = name.encode("utf-8")
        parts += [struct.pack("<B", len(encoded)), encoded, struct.pack("<d", metrics[name])]
    return b"".join(parts)


def secagg_payload(
    *,
    task_id: UUID,
    round_id: UUID,
    device_id: str,
    round_number: int,
    stage: int,
    payload: bytes,
) -> bytes:
    """Return the bytes a device signs for one SecAgg+ stage message.

    The protocol's own bytes name task, round number and the device's index only; binding the
    round id (one per try) and the device id as well makes a message replayed into another
    try, or relabelled as another device's, fail verification. Neighbours check a key
    advertisement's signature over these same bytes.
    """
    device = device_id.encode("utf-8")
    return b"".join(
        (
            b"fedengine-secagg-v1",
            task_id.bytes,
            round_id.bytes,
            struct.pack("<H", len(device)),
            device,
            struct.pack("<IB", round_number, stage),
            hashlib.sha256(payload).digest(),
        )
    )


def heartbeat_payload(*, device_id: str, sequence: int, sent_at_us: int) -> bytes:
    """Return the bytes a device signs for a heartbeat."""
    device = device_id.encode("utf-8")
    return (
        b"fedengine-heartbeat-v1"
        + struct.pack("<H", len(device))
        + device
        + struct.pack("<Qq", sequence, sent_at_us)
    )


def key_change_payload(*, device_id: str, new_public_key: bytes, sent_at_us: int) -> bytes:
    """Return the bytes a device's old key signs to hand its identity to ``new_public_key``.

    Binding the device id and the enrolment's send time means the signature moves this device
    to this key once, and cannot be replayed onto another device or after a later change.
    """
    device = device_id.encode()
    return (
        b"fedengine-key-change-v1"
        + struct.pack("<H", len(device))
        + device
        + new_public_key
        + struct.pack("<q", sent_at_us)
    )


ENROLMENT_SIGNATURES = ("signature", "token_signature")


def enrolment_payload(message: DeviceEnrolled | Mapping[str, Any]) -> bytes:
    """Return the bytes a device and its enrolment token sign: the enrolment's fields without
    its signatures, packed canonically (``codec.canonical``).

    Signing with the key being enrolled proves possession of it, and covers every field that
    matters (name, type, privacy level, capabilities, fleet, key, token id, send time), so that
    none can be changed by whoever relays it. A consumer verifies over the fields as they were
    sent (``codec.fields_of`` the record value), not over its own parsed model, so that a device
    on a later v1 (one more optional field) still verifies at an older registry, and back.
    """
    fields = message.model_dump(mode="python") if isinstance(message, DeviceEnrolled) else message
    unsigned = {k: v for k, v in fields.items() if k not in ENROLMENT_SIGNATURES}
    return b"fedengine-enrolment-v2" + codec.canonical(unsigned)


def sign_enrolment(message: DeviceEnrolled, private_key: Ed25519PrivateKey) -> DeviceEnrolled:
    """Return ``message`` signed by ``private_key`` (whose public half it enrols)."""
    return message.model_copy(update={"signature": private_key.sign(enrolment_payload(message))})


def possession_payload(*, device_id: str, public_key: bytes) -> bytes:
    """Return the bytes a device signs to hand its public key to an operator for REST enrolment.

    The operator's gateway checks it before vouching for the key, so that nobody enrols a key
    whose private half they do not hold (and then blames its device for what it never sent).
    """
    device = device_id.encode()
    return b"fedengine-key-possession-v1" + struct.pack("<H", len(device)) + device + public_key


def model_fetch_payload(*, device_id: str, task_id: UUID, version: int, sent_at_us: int) -> bytes:
    """Return the bytes a device signs to fetch a model version from the gateway as itself.

    The gateway serves a version only to a device that was asked to train on it, so the
    request must prove which device asks; the send time bounds how long a captured request
    can be replayed (the gateway accepts a few minutes either side of its own clock).
    """
    device = device_id.encode()
    return (
        b"fedengine-model-fetch-v1"
        + struct.pack("<H", len(device))
        + device
        + task_id.bytes
        + struct.pack("<Iq", version, sent_at_us)
    )
