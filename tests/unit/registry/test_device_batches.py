"""Batches of enrolments and heartbeats: each message judged in order as if handled alone,
against the devices and tokens as the messages before it left them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import enrolment_tokens, signing
from fedcommon.enrolment_tokens import EnrolmentToken
from fedcommon.errors import InvalidMessage
from fedcommon.messages.v1 import DeviceCapabilities, DeviceEnrolled, DeviceType, HeartbeatSent
from fedengine_registry.core.device_batches import (
    DeviceBatch,
    EnrolmentRequest,
    StoredDevice,
    apply_device_batch,
)
from fedengine_registry.core.enrolment import Token

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
TOKEN = enrolment_tokens.issue("f1", coordinator_key=bytes(32))
KEYS = {f"d{i}": signing.generate_private_key() for i in range(4)}
OLD = signing.generate_private_key()


def held(token: EnrolmentToken = TOKEN, **changes: object) -> dict[UUID, Token]:
    """The registry's copy of ``token``: valid for a week, 10 places, 3 taken."""
    stored = Token(
        fleet=token.fleet,
        public_key=token.public_key,
        expires_at=NOW + timedelta(days=7),
        max_devices=10,
        revoked=False,
        enrolled=3,
    )
    return {token.token_id: replace(stored, **changes)}  # type: ignore[arg-type]


def enrol(
    device_id: str,
    *,
    key: Ed25519PrivateKey | None = None,
    at: datetime = NOW,
    by_operator: bool = False,
    battery_pct: float = 100.0,
) -> EnrolmentRequest:
    key = key or KEYS[device_id]
    message = DeviceEnrolled(
        producer="device",
        device_id=device_id,
        device_name=device_id,
        device_type=DeviceType.MOBILE,
        public_key=signing.public_key_bytes(key),
        sent_at=at,
        capabilities=DeviceCapabilities(battery_pct=battery_pct),
    )
    if not by_operator:
        message = enrolment_tokens.sign_enrolment(message, device_key=key, token=TOKEN)
    return EnrolmentRequest(
        message, by_operator=by_operator, payload=signing.enrolment_payload(message)
    )


def beat(
    device_id: str, sequence: int, *, key: Ed25519PrivateKey | None = None, **hints: object
) -> HeartbeatSent:
    key = key or KEYS[device_id]
    payload = signing.heartbeat_payload(
        device_id=device_id, sequence=sequence, sent_at_us=int(NOW.timestamp() * 1_000_000)
    )
    return HeartbeatSent(
        producer="test",
        device_id=device_id,
        sequence=sequence,
        sent_at=NOW,
        signature=key.sign(payload),
        **hints,
    )


def device(device_id: str, **changes: object) -> StoredDevice:
    stored = StoredDevice(
        status="online",
        public_key=signing.public_key_bytes(KEYS[device_id]),
        enrolled_sent_at=NOW - timedelta(hours=1),
        enrolment_token_id=TOKEN.token_id,
        last_sequence=10,
        last_message_id=None,
    )
    return replace(stored, **changes)  # type: ignore[arg-type]


def apply(
    items: list[EnrolmentRequest | HeartbeatSent],
    *,
    devices: dict[str, StoredDevice] | None = None,
    tokens: dict[UUID, Token] | None = None,
    processed: set[UUID] | None = None,
) -> DeviceBatch:
    return apply_device_batch(
        items,
        devices=devices or {},
        tokens=held() if tokens is None else tokens,
        processed=processed or set(),
        now=NOW,
    )


def reasons(batch: DeviceBatch) -> list[str | None]:
    return [None if r is None else str(r) for r in batch.refusals]


def test_a_heartbeat_after_its_devices_enrolment_in_the_batch_is_accepted() -> None:
    # Prepare: two new devices, each enrolled then heartbeating, interleaved as partitions are.
    items: list[EnrolmentRequest | HeartbeatSent] = [
        enrol("d0"),
        enrol("d1"),
        beat("d0", 1),
        beat("d1", 1),
        beat("d0", 2),
    ]

    # Execute
    batch = apply(items)

    # Assert: all accepted; each device stored once with its newest heartbeat; one status
    # event per enrolment (the heartbeats find the device online already).
    assert batch.refusals == [None] * 5
    assert [w.message.device_id for w in batch.enrolments] == ["d0", "d1"]
    assert [(h.device_id, h.sequence) for h in batch.heartbeats] == [("d0", 2), ("d1", 1)]
    assert batch.online == ["d0", "d1"]
    assert batch.accepted_heartbeats == 3
    assert [m.device_id for m in batch.enrolled] == ["d0", "d1"]


def test_a_heartbeat_before_its_devices_first_enrolment_is_refused_as_unknown() -> None:
    batch = apply([beat("d0", 1), enrol("d0")])

    assert reasons(batch) == ["heartbeat from unknown device d0", None]
    assert batch.heartbeats == []


def test_a_tokens_places_are_taken_one_at_a_time_in_order() -> None:
    # Prepare: a token with one place left, and three new devices asking for it.
    tokens = held(enrolled=9)

    # Execute
    batch = apply([enrol("d0"), enrol("d1"), beat("d1", 1), enrol("d2")], tokens=tokens)

    # Assert: the first takes it; the others are refused as if handled alone after it.
    full = "the token has enrolled its 10 devices"
    assert reasons(batch) == [
        None,
        f"enrolment of d1: {full}",
        "heartbeat from unknown device d1",
        f"enrolment of d2: {full}",
    ]
    assert [w.message.device_id for w in batch.enrolments] == ["d0"]


def test_a_device_holding_the_token_re_enrols_into_a_full_token() -> None:
    # The device's own place does not count against it (get_token's "other than").
    devices = {"d0": device("d0")}

    batch = apply(
        [enrol("d0"), enrol("d0", at=NOW + timedelta(seconds=1)), enrol("d1")],
        devices=devices,
        tokens=held(enrolled=10),
    )

    assert reasons(batch)[:2] == [None, None]
    assert "has enrolled its 10 devices" in (reasons(batch)[2] or "")
    # One write per device: its last accepted enrolment; an event row and status event each.
    assert [w.message.sent_at for w in batch.enrolments] == [NOW + timedelta(seconds=1)]
    assert len(batch.enrolled) == 2
    assert batch.online == ["d0", "d0"]


def test_an_operators_re_enrolment_without_a_token_frees_the_devices_place() -> None:
    devices = {"d0": device("d0")}

    batch = apply(
        [enrol("d0", by_operator=True), enrol("d1")], devices=devices, tokens=held(enrolled=10)
    )

    assert batch.refusals == [None, None]


def test_a_redelivered_enrolment_is_skipped_once_applied_and_judged_again_once_refused() -> None:
    # Prepare: d0's enrolment handled before, d1's twice in the batch; d2's refused (revoked
    # token would refuse all: use a wrong fleet signature instead: a forged device signature).
    first = enrol("d0")
    again = enrol("d1")
    forged = enrol("d2")
    forged = replace(forged, payload=forged.payload + b"x")

    # Execute
    batch = apply([first, again, again, forged, forged], processed={first.message.message_id})

    # Assert
    assert batch.refusals[:3] == [None, None, None]
    assert isinstance(batch.refusals[3], InvalidMessage)
    assert isinstance(batch.refusals[4], InvalidMessage)
    assert [m.device_id for m in batch.enrolled] == ["d1"]
    assert batch.duplicates == [
        ("device.enrolled", first.message.message_id),
        ("device.enrolled", again.message.message_id),
    ]


def test_a_removed_device_is_neither_enrolled_nor_heard() -> None:
    devices = {"d0": device("d0", status="removed")}

    batch = apply([enrol("d0"), beat("d0", 11)], devices=devices)

    assert reasons(batch) == [
        "device d0 was removed; only an operator can restore it",
        "heartbeat from removed device d0",
    ]
    assert (batch.enrolments, batch.heartbeats, batch.online) == ([], [], [])


def test_heartbeats_are_judged_against_the_key_the_batch_enrolled() -> None:
    # Prepare: d0 holds OLD; a key change without OLD's signature is refused, an operator's
    # is accepted; heartbeats then verify against the key in force when each is judged.
    devices = {"d0": device("d0", public_key=signing.public_key_bytes(OLD))}
    items: list[EnrolmentRequest | HeartbeatSent] = [
        enrol("d0"),
        beat("d0", 11, key=OLD),
        enrol("d0", by_operator=True, at=NOW + timedelta(seconds=1)),
        beat("d0", 12, key=OLD),
        beat("d0", 13),
    ]

    # Execute
    batch = apply(items, devices=devices)

    # Assert
    assert "changes only with its old key's signature" in (reasons(batch)[0] or "")
    assert reasons(batch)[1:3] == [None, None]
    assert isinstance(batch.refusals[3], InvalidMessage)
    assert batch.refusals[4] is None
    assert [w.public_key for w in batch.enrolments] == [signing.public_key_bytes(KEYS["d0"])]
    assert [h.sequence for h in batch.heartbeats] == [13]


def test_an_enrolment_sets_the_battery_a_heartbeat_before_it_told() -> None:
    # Prepare: an offline device heartbeats (battery 50, charging), re-enrols (battery 80).
    devices = {"d0": device("d0", status="offline")}
    items: list[EnrolmentRequest | HeartbeatSent] = [
        beat("d0", 11, battery_pct=50.0, charging=True),
        enrol("d0", battery_pct=80.0),
        beat("d0", 12),
    ]

    # Execute
    batch = apply(items, devices=devices)

    # Assert: the heartbeats' write leaves the enrolment's battery (None: keep it) but the
    # charging hint; the device came online with the first heartbeat, then was enrolled.
    assert batch.refusals == [None] * 3
    (stored,) = batch.heartbeats
    assert (stored.sequence, stored.battery_pct, stored.charging) == (12, None, True)
    assert stored.came_online
    assert batch.online == ["d0", "d0"]


def test_a_replayed_heartbeat_and_an_old_enrolment_change_nothing() -> None:
    devices = {"d0": device("d0")}

    batch = apply([beat("d0", 10), enrol("d0", at=NOW - timedelta(hours=2))], devices=devices)

    assert reasons(batch) == [
        "replayed heartbeat 10 <= 10 from d0",
        "enrolment of d0 is not newer than the one in force",
    ]
    assert (batch.enrolled, batch.heartbeats) == ([], [])
