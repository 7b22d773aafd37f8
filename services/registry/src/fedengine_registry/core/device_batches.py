"""Batch rules: a run of enrolments and heartbeats judged in order, as if each were alone.

A partition of fed.devices carries each device's enrolment and then its heartbeats (keyed by
device id). The registry applies a run of them in one transaction: every message is judged by
the rules it would meet alone (``core.enrolment.check_enrolment``,
``core.heartbeats.check_heartbeat``), against the devices and tokens as the messages before it
in the run left them, so a heartbeat that follows its device's enrolment is accepted, and the
second of two enrolments that together pass a token's ``max_devices`` is refused. What the run
leaves of each device is then written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from fedcommon.errors import InvalidMessage, ProtocolViolation
from fedcommon.messages.v1 import DeviceEnrolled, DeviceStatus, HeartbeatSent
from fedengine_registry.core.enrolment import Enrolled, Token, check_enrolment
from fedengine_registry.core.heartbeats import DeviceHeartbeat, check_heartbeat

T = TypeVar("T")


@dataclass(frozen=True)
class StoredDevice:
    """What a batch needs of a device as stored (or as the batch has left it so far)."""

    status: str
    public_key: bytes | None
    enrolled_sent_at: datetime | None
    enrolment_token_id: UUID | None
    last_sequence: int
    # The message id of the heartbeat applied last: its redelivery is skipped, not refused.
    last_message_id: UUID | None


@dataclass(frozen=True)
class EnrolmentRequest:
    """An enrolment with what its record tells beyond the message."""

    message: DeviceEnrolled
    # Vouched for by the gateway (an operator's enrolment): needs no token nor device signature.
    by_operator: bool
    # What the device and its token signed: ``signing.enrolment_payload`` of the fields sent.
    payload: bytes


@dataclass(frozen=True)
class EnrolmentWrite:
    """A device's last accepted enrolment in the batch, with the key in force after it."""

    message: DeviceEnrolled
    public_key: bytes | None


@dataclass(frozen=True)
class DeviceBatch:
    """The outcome of a batch.

    ``refusals``: per item, in order, None (accepted or skipped) or why it is refused.
    ``enrolled``: the enrolments accepted, in order (each gets its dedupe row and event row).
    ``enrolments``: per device enrolled, what to store (its last accepted enrolment).
    ``heartbeats``: per device with an accepted heartbeat, what to store after the enrolments.
    ``online``: the devices whose status becomes online, in order (one event each).
    """

    refusals: list[InvalidMessage | None]
    enrolled: list[DeviceEnrolled]
    enrolments: list[EnrolmentWrite]
    heartbeats: list[DeviceHeartbeat]
    online: list[str]
    accepted_heartbeats: int = 0
    duplicates: list[tuple[str, UUID]] = field(default_factory=list)


@dataclass(frozen=True)
class _Beat:
    """A device's newest accepted heartbeat in the batch and the hints told since."""

    sequence: int
    message_id: UUID
    # Told since the device's last enrolment in the batch (an enrolment sets the battery).
    battery_pct: float | None
    charging: bool | None
    network: str | None
    came_online: bool


def apply_device_batch(
    items: Sequence[EnrolmentRequest | HeartbeatSent],
    *,
    devices: Mapping[str, StoredDevice],
    tokens: Mapping[UUID, Token],
    processed: Collection[UUID],
    now: datetime,
) -> DeviceBatch:
    """Judge ``items`` in order as if each were handled alone, and fold what they accept.

    Parameters
    ----------
    items
        Enrolments and heartbeats in the order of their partition.
    devices
        The stored devices the items name (a device missing here does not exist yet).
    tokens
        The enrolment tokens the enrolments name, each with ``enrolled`` counting every
        device enrolled with it now (the device asking included, where it holds it).
    processed
        The enrolments' message ids handled before (a redelivery is skipped).
    now
        The registry's time, at which token expiry is judged.

    Returns
    -------
    DeviceBatch
        Per item its refusal or None, and what to write.
    """
    state = dict(devices)
    counts = {token_id: token.enrolled for token_id, token in tokens.items()}
    seen = set(processed)
    refusals: list[InvalidMessage | None] = []
    enrolled: list[DeviceEnrolled] = []
    enrolments: dict[str, EnrolmentWrite] = {}
    beats: dict[str, _Beat] = {}
    online: list[str] = []
    duplicates: list[tuple[str, UUID]] = []
    accepted_heartbeats = 0
    for item in items:
        if isinstance(item, EnrolmentRequest):
            message = item.message
            if message.message_id in seen:
                duplicates.append((message.type, message.message_id))
                refusals.append(None)
                continue
            device = state.get(message.device_id)
            try:
                check_enrolment(
                    message,
                    existing=None
                    if device is None
                    else Enrolled(device.status, device.public_key, device.enrolled_sent_at),
                    by_operator=item.by_operator,
                    token=_token_for(message, device, tokens, counts),
                    now=now,
                    payload=item.payload,
                )
            except InvalidMessage as exc:
                refusals.append(exc)
                continue
            refusals.append(None)
            seen.add(message.message_id)
            enrolled.append(message)
            old_token = None if device is None else device.enrolment_token_id
            if old_token is not None:
                counts[old_token] = counts.get(old_token, 0) - 1
            if message.enrolment_token_id is not None:
                token_id = message.enrolment_token_id
                counts[token_id] = counts.get(token_id, 0) + 1
            public_key = message.public_key or (None if device is None else device.public_key)
            state[message.device_id] = StoredDevice(
                status=DeviceStatus.ONLINE,
                public_key=public_key,
                enrolled_sent_at=message.sent_at,
                enrolment_token_id=message.enrolment_token_id,
                last_sequence=-1 if device is None else device.last_sequence,
                last_message_id=None if device is None else device.last_message_id,
            )
            enrolments[message.device_id] = EnrolmentWrite(message, public_key)
            beat = beats.get(message.device_id)
            if beat is not None:
                # The enrolment stores its own battery: only a later heartbeat's counts.
                beats[message.device_id] = dataclasses.replace(beat, battery_pct=None)
            online.append(message.device_id)
            continue
        device = state.get(item.device_id)
        if device is None:
            refusals.append(ProtocolViolation(f"heartbeat from unknown device {item.device_id}"))
            continue
        if item.message_id == device.last_message_id:
            duplicates.append((item.type, item.message_id))
            refusals.append(None)
            continue
        try:
            check_heartbeat(
                item,
                public_key=device.public_key,
                last_sequence=device.last_sequence,
                removed=device.status == DeviceStatus.REMOVED,
            )
        except InvalidMessage as exc:
            refusals.append(exc)
            continue
        refusals.append(None)
        accepted_heartbeats += 1
        came_online = device.status == DeviceStatus.OFFLINE
        if came_online:
            online.append(item.device_id)
        state[item.device_id] = dataclasses.replace(
            device,
            status=DeviceStatus.ONLINE,
            last_sequence=item.sequence,
            last_message_id=item.message_id,
        )
        earlier = beats.get(item.device_id)
        network = None if item.network is None else item.network.value
        beats[item.device_id] = _Beat(
            sequence=item.sequence,
            message_id=item.message_id,
            battery_pct=_told(item.battery_pct, None if earlier is None else earlier.battery_pct),
            charging=_told(item.charging, None if earlier is None else earlier.charging),
            network=_told(network, None if earlier is None else earlier.network),
            came_online=came_online or (earlier is not None and earlier.came_online),
        )
    return DeviceBatch(
        refusals=refusals,
        enrolled=enrolled,
        enrolments=list(enrolments.values()),
        heartbeats=[
            DeviceHeartbeat(
                device_id=device_id,
                sequence=beat.sequence,
                message_id=beat.message_id,
                battery_pct=beat.battery_pct,
                charging=beat.charging,
                network=beat.network,
                came_online=beat.came_online,
            )
            for device_id, beat in beats.items()
        ],
        online=online,
        accepted_heartbeats=accepted_heartbeats,
        duplicates=duplicates,
    )


def _token_for(
    message: DeviceEnrolled,
    device: StoredDevice | None,
    tokens: Mapping[UUID, Token],
    counts: Mapping[UUID, int],
) -> Token | None:
    """The token ``message`` names as ``check_enrolment`` takes it: ``enrolled`` counts the
    devices enrolled with it now other than the one asking."""
    token_id = message.enrolment_token_id
    if token_id is None or token_id not in tokens:
        return None
    holds = device is not None and device.enrolment_token_id == token_id
    return dataclasses.replace(tokens[token_id], enrolled=counts[token_id] - int(holds))


def _told(new: T | None, earlier: T | None) -> T | None:
    """The newer value where the newer heartbeat tells one, else the earlier one's."""
    return earlier if new is None else new
