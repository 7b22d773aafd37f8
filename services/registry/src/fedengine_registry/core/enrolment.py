"""Enrolment rules: who may enrol a device, change its key, or bring it back.

A device's identity cannot be taken over by anyone who can write to fed.devices:
- an enrolment is signed by the key it enrols (proof of possession, covering every field),
  unless an operator enrols the device through the gateway;
- a device that enrols itself also needs an operator's enrolment token for its fleet (signed by
  the token's key, fedcommon.enrolment_tokens): unknown, revoked, expired or full tokens, and
  tokens of another fleet, are refused, so that nobody floods the registry with self-made
  devices; expiry and revocation are judged at the registry's time of handling, not at the
  ``sent_at`` the message claims;
- its key changes only with a signature by the old key, or by an operator (an enrolment the
  gateway vouches for as a service);
- a removed device stays removed until an operator restores it;
- an enrolment older than the one in force (a replay) changes nothing, so it cannot downgrade
  the device (its privacy level, say);
- a key that proves nothing (small order, non-canonical, not a point: fedcommon.ed25519_keys)
  is never enrolled, by anyone, nor a token's key registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fedcommon import ed25519_keys, signing, trust
from fedcommon.errors import ProtocolViolation
from fedcommon.messages.v1 import DeviceEnrolled, DeviceStatus


@dataclass(frozen=True)
class Enrolled:
    """What the registry holds of an enrolled device, as far as these rules need it."""

    status: str
    public_key: bytes | None
    enrolled_sent_at: datetime | None


# A device's enrolment must be this fresh: it bounds how far a token holder can backdate an
# enrolment past the token's expiry. The same as the services' replay window.
FRESH_FOR = timedelta(days=1)


@dataclass(frozen=True)
class Token:
    """An enrolment token as the registry holds it (only its public half)."""

    fleet: str
    public_key: bytes
    expires_at: datetime
    max_devices: int
    revoked: bool
    # Devices enrolled with it now, other than the one asking.
    enrolled: int


def check_key(public_key: bytes, *, what: str) -> None:
    """Raise ``ProtocolViolation`` unless ``public_key`` is a sound Ed25519 key for ``what``.

    The reason names ``what`` and the kind of weakness, never the key's bytes.
    """
    try:
        ed25519_keys.check_public_key(public_key, name=f"the public key of {what}")
    except ed25519_keys.WeakKeyError as exc:
        raise ProtocolViolation(f"refused: {exc}") from exc


def check_token(
    message: DeviceEnrolled, token: Token | None, *, now: datetime, payload: bytes
) -> None:
    """Raise ``ProtocolViolation`` unless ``token`` admits ``message`` into its fleet.

    ``payload`` is what the token signed: ``signing.enrolment_payload`` of the fields sent.
    """
    device = message.device_id
    if message.enrolment_token_id is None or message.token_signature is None:
        raise ProtocolViolation(
            f"enrolment of {device} needs an enrolment token an operator issued for its fleet"
        )
    if token is None:
        raise ProtocolViolation(f"enrolment of {device}: unknown enrolment token")
    if token.revoked:
        raise ProtocolViolation(f"enrolment of {device}: the enrolment token was revoked")
    if message.fleet != token.fleet:
        raise ProtocolViolation(
            f"enrolment of {device}: the token is for fleet {token.fleet!r}, not {message.fleet!r}"
        )
    signing.verify(public_key=token.public_key, signature=message.token_signature, payload=payload)
    if not now - FRESH_FOR <= message.sent_at <= now + trust.CLOCK_SKEW:
        raise ProtocolViolation(f"enrolment of {device}: sent_at is not within a day of now")
    # Judged at the registry's time, never the message's: its sent_at is the sender's word, and
    # the freshness window above lets a holder backdate it by up to a day, so a token that
    # had expired would otherwise still enrol devices "sent" just before its expiry. An
    # enrolment that waited out a registry outage past the expiry is refused too: the device
    # needs a token in force when it is admitted.
    if now >= token.expires_at:
        raise ProtocolViolation(f"enrolment of {device}: the enrolment token has expired")
    if token.enrolled >= token.max_devices:
        raise ProtocolViolation(
            f"enrolment of {device}: the token has enrolled its {token.max_devices} devices"
        )


def check_enrolment(
    message: DeviceEnrolled,
    *,
    existing: Enrolled | None,
    by_operator: bool,
    token: Token | None = None,
    now: datetime,
    payload: bytes | None = None,
) -> None:
    """Raise ``ProtocolViolation`` unless ``message`` may (re-)enrol its device.

    ``token`` is the enrolment token the message names (None when it names none or an unknown
    one); an operator's enrolment, vouched for by the gateway, needs none. ``payload`` is what
    the device and its token signed, made from the fields as received (by default, from
    ``message``).
    """
    if message.public_key is not None:
        # First, and for operators too: the gateway checks this, but a key enrolled here is
        # believed by every service that verifies this device from now on.
        check_key(message.public_key, what=f"device {message.device_id}")
    if not by_operator:
        if message.public_key is None or message.signature is None:
            raise ProtocolViolation(
                f"enrolment of {message.device_id} must be signed by the key it enrols"
            )
        signed = signing.enrolment_payload(message) if payload is None else payload
        signing.verify(public_key=message.public_key, signature=message.signature, payload=signed)
        check_token(message, token, now=now, payload=signed)
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
