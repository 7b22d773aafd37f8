"""Heartbeat batches: each heartbeat judged as if handled alone, in order; the newest accepted
one per device is what is stored (last write wins); replays and forgeries change nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from uuid import uuid4

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcommon import signing
from fedcommon.messages.v1 import HeartbeatSent, NetworkKind
from fedengine_registry.core.heartbeats import HeartbeatDevice, apply_heartbeats

KEY = signing.generate_private_key()
OTHER = signing.generate_private_key()
SENT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def heartbeat(
    sequence: int,
    device_id: str = "d1",
    *,
    key: Ed25519PrivateKey = KEY,
    **hints: object,
) -> HeartbeatSent:
    payload = signing.heartbeat_payload(
        device_id=device_id, sequence=sequence, sent_at_us=int(SENT.timestamp() * 1_000_000)
    )
    return HeartbeatSent(
        producer="test",
        device_id=device_id,
        sequence=sequence,
        sent_at=SENT,
        signature=key.sign(payload),
        **hints,  # type: ignore[arg-type]
    )


def stored(**changes: object) -> HeartbeatDevice:
    device = HeartbeatDevice(
        public_key=signing.public_key_bytes(KEY),
        last_sequence=10,
        last_message_id=None,
        removed=False,
        offline=False,
    )
    return replace(device, **changes)  # type: ignore[arg-type]


def test_the_highest_sequence_of_each_device_is_stored_once() -> None:
    # Prepare
    messages = [heartbeat(11), heartbeat(11, "d2"), heartbeat(12), heartbeat(13)]

    # Execute
    batch = apply_heartbeats(messages, {"d1": stored(), "d2": stored()})

    # Assert
    assert batch.refusals == [None, None, None, None]
    assert batch.accepted == 4
    assert {d.device_id: d.sequence for d in batch.devices} == {"d1": 13, "d2": 11}
    assert next(d for d in batch.devices if d.device_id == "d1").message_id == (
        messages[3].message_id
    )


def test_an_older_sequence_after_a_newer_one_is_refused_and_changes_nothing() -> None:
    batch = apply_heartbeats([heartbeat(15), heartbeat(12), heartbeat(15)], {"d1": stored()})

    assert batch.refusals[0] is None
    assert "replayed heartbeat 12 <= 15" in str(batch.refusals[1])
    assert "replayed heartbeat 15 <= 15" in str(batch.refusals[2])
    assert [(d.device_id, d.sequence) for d in batch.devices] == [("d1", 15)]
    assert batch.accepted == 1


def test_a_sequence_at_or_below_the_stored_one_is_refused() -> None:
    batch = apply_heartbeats([heartbeat(10), heartbeat(3)], {"d1": stored()})

    assert all("replayed heartbeat" in str(refusal) for refusal in batch.refusals)
    assert batch.devices == []


def test_forged_unknown_removed_and_keyless_heartbeats_are_refused_with_their_reason() -> None:
    devices = {
        "d1": stored(),
        "gone": stored(removed=True),
        "nokey": stored(public_key=None),
    }
    batch = apply_heartbeats(
        [
            heartbeat(20, key=OTHER),
            heartbeat(20, "ghost"),
            heartbeat(20, "gone"),
            heartbeat(20, "nokey"),
            heartbeat(21),
        ],
        devices,
    )

    reasons = [str(refusal) for refusal in batch.refusals[:4]]
    assert "signature" in reasons[0]
    assert reasons[1] == "heartbeat from unknown device ghost"
    assert reasons[2] == "heartbeat from removed device gone"
    assert reasons[3] == "device nokey has no enrolled key"
    # The forged one did not advance the sequence: the genuine 21 counts.
    assert batch.refusals[4] is None
    assert [(d.device_id, d.sequence) for d in batch.devices] == [("d1", 21)]


def test_a_redelivered_last_heartbeat_is_skipped_not_refused() -> None:
    # Prepare: heartbeat 11 was applied, its offset not committed (a crash), so it comes again.
    applied = heartbeat(11)
    device = stored(last_sequence=11, last_message_id=applied.message_id)

    # Execute
    batch = apply_heartbeats([applied, heartbeat(12)], {"d1": device})

    # Assert
    assert batch.refusals == [None, None]
    assert batch.duplicates == [applied.message_id]
    assert batch.accepted == 1
    assert [d.sequence for d in batch.devices] == [12]


def test_a_duplicate_within_the_batch_is_skipped() -> None:
    message = heartbeat(11)

    batch = apply_heartbeats([message, message], {"d1": stored()})

    assert batch.refusals == [None, None]
    assert batch.duplicates == [message.message_id]
    assert batch.accepted == 1


def test_hints_keep_the_last_value_told_and_none_means_not_told() -> None:
    batch = apply_heartbeats(
        [
            heartbeat(11, battery_pct=80.0, charging=False, network=NetworkKind.WIFI),
            heartbeat(12, battery_pct=70.0),
            heartbeat(13),
        ],
        {"d1": stored(), "d2": stored()},
    )

    (device,) = batch.devices
    assert (device.battery_pct, device.charging, device.network) == (70.0, False, "wifi")


def test_an_offline_device_comes_online_once() -> None:
    batch = apply_heartbeats(
        [heartbeat(11), heartbeat(12), heartbeat(11, "d2")],
        {"d1": stored(offline=True), "d2": stored()},
    )

    assert {d.device_id: d.came_online for d in batch.devices} == {"d1": True, "d2": False}


def test_a_message_id_alone_is_no_heartbeat() -> None:
    # A different message with the stored id's sequence is still a replay (not a duplicate).
    device = stored(last_sequence=11, last_message_id=uuid4())

    batch = apply_heartbeats([heartbeat(11)], {"d1": device})

    assert "replayed heartbeat 11 <= 11" in str(batch.refusals[0])
