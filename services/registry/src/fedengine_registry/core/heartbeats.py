"""Heartbeat rules: which heartbeats count, and what a batch of them leaves of each device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from uuid import UUID

from fedcommon import signing
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import HeartbeatSent

T = TypeVar("T")


def check_heartbeat(
    message: HeartbeatSent, *, public_key: bytes | None, last_sequence: int, removed: bool
) -> None:
    """Raise ``ProtocolViolation`` unless ``message`` is a fresh heartbeat signed by the device."""
    if removed:
        raise ProtocolViolation(f"heartbeat from removed device {message.device_id}")
    if public_key is None:
        raise ProtocolViolation(f"device {message.device_id} has no enrolled key")
    signing.verify(
        public_key=public_key,
        signature=message.signature,
        payload=signing.heartbeat_payload(
            device_id=message.device_id,
            sequence=message.sequence,
            sent_at_us=int(message.sent_at.timestamp() * 1_000_000),
        ),
    )
    if message.sequence <= last_sequence:
        raise ProtocolViolation(
            f"replayed heartbeat {message.sequence} <= {last_sequence} from {message.device_id}"
        )


@dataclass(frozen=True)
class HeartbeatDevice:
    """What a batch of heartbeats needs of a device as stored."""

    public_key: bytes | None
    last_sequence: int
    # The message id of the heartbeat applied last: its redelivery is skipped, not refused.
    last_message_id: UUID | None
    removed: bool
    offline: bool


@dataclass(frozen=True)
class DeviceHeartbeat:
    """What a batch leaves of one device: its newest accepted heartbeat, and the last value of
    each hint any accepted heartbeat told (None: none told; the stored value stays)."""

    device_id: str
    sequence: int
    message_id: UUID
    battery_pct: float | None
    charging: bool | None
    network: str | None
    came_online: bool


@dataclass(frozen=True)
class HeartbeatBatch:
    """The outcome of a batch: per message (in order), None or why it is refused; per device
    with an accepted heartbeat, what to store; the ids of skipped duplicates."""

    refusals: list[ProtocolViolation | None]
    devices: list[DeviceHeartbeat]
    accepted: int
    duplicates: list[UUID] = field(default_factory=list)


@dataclass(frozen=True)
class _Told:
    battery_pct: float | None = None
    charging: bool | None = None
    network: str | None = None


_NOTHING_TOLD = _Told()


def apply_heartbeats(
    messages: Sequence[HeartbeatSent], devices: Mapping[str, HeartbeatDevice]
) -> HeartbeatBatch:
    """Judge ``messages`` in order as if each were handled alone, and fold what they accept.

    Each is checked as :func:`check_heartbeat` checks one, against the device as the messages
    before it in the batch left it: an older or equal sequence is refused as a replay (last
    write wins, and a replay changes nothing). A redelivery of the heartbeat applied last (its
    message id) is skipped without a refusal, as the per-message dedupe skipped it. A device
    missing from ``devices`` is unknown: its heartbeats are refused.
    """
    refusals: list[ProtocolViolation | None] = []
    state: dict[str, DeviceHeartbeat] = {}
    duplicates: list[UUID] = []
    accepted = 0
    for message in messages:
        stored = devices.get(message.device_id)
        if stored is None:
            refusals.append(ProtocolViolation(f"heartbeat from unknown device {message.device_id}"))
            continue
        current = state.get(message.device_id)
        last_message_id = stored.last_message_id if current is None else current.message_id
        if message.message_id == last_message_id:
            duplicates.append(message.message_id)
            refusals.append(None)
            continue
        try:
            check_heartbeat(
                message,
                public_key=stored.public_key,
                last_sequence=stored.last_sequence if current is None else current.sequence,
                removed=stored.removed,
            )
        except ProtocolViolation as exc:
            refusals.append(exc)
            continue
        network = None if message.network is None else message.network.value
        earlier = current or _NOTHING_TOLD
        state[message.device_id] = DeviceHeartbeat(
            device_id=message.device_id,
            sequence=message.sequence,
            message_id=message.message_id,
            battery_pct=_told(message.battery_pct, earlier.battery_pct),
            charging=_told(message.charging, earlier.charging),
            network=_told(network, earlier.network),
            came_online=stored.offline,
        )
        accepted += 1
        refusals.append(None)
    return HeartbeatBatch(refusals, list(state.values()), accepted, duplicates)


def _told(new: T | None, earlier: T | None) -> T | None:
    """The newer value where the newer heartbeat tells one, else the earlier one's."""
    return earlier if new is None else new
