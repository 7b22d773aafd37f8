"""Heartbeat rules: which heartbeats count, and when silence means offline."""

from __future__ import annotations

from fedcommon import signing
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import HeartbeatSent


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
