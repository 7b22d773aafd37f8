"""Only a service can speak for a service: signed service messages and the matrix of who may
send what where.

Devices and services share one Kafka cluster, so a message is believed for its signature, not
for the topic it arrived on. Every message a service produces carries two headers: the signing
service's name and an Ed25519 signature over the topic, the key and the value. Every consumer
checks them against :data:`MATRIX` before its handler runs. Device messages (heartbeats,
updates) carry their device's signature inside the payload instead, checked by their handler
against the device's enrolled key; for those the matrix allows ``DEVICE``.

A signed message whose ``sent_at`` lies outside the deduplication window is refused, so that a
replayed command cannot apply again once its id has been purged from ``processed_messages``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcommon import ed25519_keys, topics

SIGNER_HEADER = "fe-signer"
SIGNATURE_HEADER = "fe-signature"
# Not a service: the message speaks for a device, whose own signature is in the payload.
DEVICE = "device"
SERVICES = ("registry", "coordinator", "aggregator", "gateway", "privacy")
# How far ahead of this consumer's clock a sender's clock may run.
CLOCK_SKEW = timedelta(minutes=5)

_GATEWAY = frozenset({"gateway"})
_COORDINATOR = frozenset({"coordinator"})
_PRIVACY = frozenset({"privacy"})

# (topic, message type) -> who may send it. Anything not listed is refused.
MATRIX: Mapping[tuple[str, str], frozenset[str]] = {
    # A device enrols itself with its own key and an operator's enrolment token (the registry
    # checks both); the gateway enrols devices as a service, for an operator.
    (topics.DEVICES, "device.enrolled"): frozenset({"gateway", DEVICE}),
    (topics.DEVICES, "device.heartbeat_sent"): frozenset({DEVICE}),
    (topics.DEVICES, "device.removed"): _GATEWAY,
    (topics.DEVICES, "device.restored"): _GATEWAY,
    (topics.DEVICES, "enrolment_token.issued"): _GATEWAY,
    (topics.DEVICES, "enrolment_token.revoked"): _GATEWAY,
    # Every task command, and cleanup: what people ask for through the gateway.
    **{(topics.TASKS, kind): _GATEWAY for kind in topics.carried(topics.TASKS)},
    (topics.DEVICE_COMMANDS, "train.requested"): _COORDINATOR,
    (topics.DEVICE_COMMANDS, "evaluate.requested"): _COORDINATOR,
    (topics.DEVICE_COMMANDS, "secagg.delivered"): frozenset({"aggregator"}),
    (topics.SECAGG, "secagg.submitted"): frozenset({DEVICE}),
    (topics.EVALUATIONS, "evaluation.submitted"): frozenset({DEVICE}),
    (topics.MODELS, "model.published"): _COORDINATOR,
    (topics.UPDATES, "round.opened"): _COORDINATOR,
    (topics.UPDATES, "update.submitted"): frozenset({DEVICE}),
    (topics.UPDATES, "update.declined"): frozenset({DEVICE}),
    (topics.ROUNDS, "round.aggregated"): frozenset({"aggregator"}),
    (topics.ROUNDS, "round.failed"): frozenset({"aggregator"}),
    (topics.EVENTS, "task.state_changed"): _COORDINATOR,
    (topics.EVENTS, "round.started"): _COORDINATOR,
    (topics.EVENTS, "round.completed"): _COORDINATOR,
    (topics.EVENTS, "round.evaluated"): _COORDINATOR,
    (topics.EVENTS, "device.status_changed"): frozenset({"registry"}),
    (topics.PRIVACY, "privacy.spend_requested"): _COORDINATOR,
    (topics.PRIVACY, "privacy.spend_approved"): _PRIVACY,
    (topics.PRIVACY, "privacy.spend_refused"): _PRIVACY,
    (topics.PRIVACY, "privacy.local_dp_assigned"): _COORDINATOR,
    (topics.EVENTS, "privacy.budget_exhausted"): _PRIVACY,
}


def signed_bytes(topic: str, key: bytes | None, value: bytes | None) -> bytes:
    """The layout a service signs: a label, then topic, key and value, each length-prefixed."""
    parts = [b"fedengine/message/v1", topic.encode(), key or b"", value or b""]
    return b"".join(len(part).to_bytes(8, "little") + part for part in parts)


@dataclass(frozen=True)
class Signer:
    """A service's identity: its name and its private key."""

    name: str
    key: Ed25519PrivateKey

    def headers(
        self, topic: str, key: bytes | None, value: bytes | None
    ) -> list[tuple[str, bytes]]:
        signature = self.key.sign(signed_bytes(topic, key, value))
        return [(SIGNER_HEADER, self.name.encode()), (SIGNATURE_HEADER, signature)]


def signer_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The service that signed a record, once the consume loop has verified it (else None)."""
    for name, raw in headers:
        if name == SIGNER_HEADER:
            return raw.decode(errors="replace")
    return None


@dataclass(frozen=True)
class Verifier:
    """What a consumer needs to check a message: every service's public key, the topic prefix
    and the window outside which a signed message counts as a replay."""

    public_keys: Mapping[str, bytes]
    prefix: str
    window: timedelta

    def refusal(
        self,
        *,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        message_type: str,
        sent_at: datetime,
        now: datetime,
    ) -> str | None:
        """Return why the message must be refused, or None when it may be handled."""
        base = topics.base_name(self.prefix, topic)
        allowed = MATRIX.get((base or "", message_type))
        if allowed is None:
            return f"nobody may send {message_type} on {base}"
        # A header may carry no value at all (Kafka allows null): that is no signer and no
        # signature, never something to decode.
        found = {
            name: raw
            for name, raw in headers
            if name in (SIGNER_HEADER, SIGNATURE_HEADER) and isinstance(raw, bytes)
        }
        if SIGNER_HEADER not in found:
            if DEVICE in allowed:
                return None  # the handler checks the device's own signature
            return f"{message_type} on {base} must be signed by {'/'.join(sorted(allowed))}"
        signer = found[SIGNER_HEADER].decode(errors="replace")[:40]
        if signer not in allowed:
            return f"{signer!r} may not send {message_type} on {base}"
        public = self.public_keys.get(signer)
        if public is None:
            return f"no public key for {signer!r}"
        signature = found.get(SIGNATURE_HEADER, b"")
        try:
            # A small-order service key would let anyone sign as that service: refuse it here
            # as well as at start-up (settings), and a signature with S >= L with it.
            ed25519_keys.check_public_key(public)
            ed25519_keys.check_signature(signature)
            Ed25519PublicKey.from_public_bytes(public).verify(
                signature, signed_bytes(topic, key, value)
            )
        except (InvalidSignature, ValueError):  # WeakKeyError is a ValueError
            return f"bad signature for {signer!r}"
        if not now - self.window <= sent_at <= now + CLOCK_SKEW:
            return f"sent_at outside the {self.window.total_seconds():.0f} s replay window"
        return None
