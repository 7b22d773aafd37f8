"""Enrolment tokens: what an operator hands a fleet so that its devices may enrol themselves.

A token is an Ed25519 key pair issued for one fleet. The registry keeps only its public half;
a device signs its enrolment with the private half (beside its own key's signature). So the
token itself never crosses the bus: neither a reader of fed.devices nor a copy of the registry's
database can enrol anything with what they see. Whoever holds a token can enrol at most its
``max_devices`` new devices into its fleet, until it expires or an operator revokes it, which is
what stops a stranger from flooding the registry with self-made devices.

The token also carries the coordinator's public key, so that a device receives, at enrolment
and from its operator, the key that its train requests must be signed with, and the
aggregator's, which signs the secure-aggregation deliveries it sends each device. A token
issued before secure aggregation has no aggregator key: it still decodes, and its devices
cannot take part in secure rounds.

The encoded form is ``fet1.`` and the unpadded URL-safe base64 of a small JSON document; it is a
secret and is shown once, when issued.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from uuid import UUID, uuid4

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import TypeAdapter, ValidationError

from fedcommon import ed25519_keys, signing
from fedcommon.constraints import FleetName
from fedcommon.messages.v1 import DeviceEnrolled

PREFIX = "fet1."
# Far longer than any token we make (about 300 characters); refused before decoding.
MAX_ENCODED_LENGTH = 2_000
_FLEET: TypeAdapter[str] = TypeAdapter(FleetName)


class InvalidToken(ValueError):
    """The text is not an enrolment token this version understands."""


@dataclass(frozen=True)
class EnrolmentToken:
    token_id: UUID
    fleet: str
    key: Ed25519PrivateKey
    coordinator_key: bytes
    # None in a token issued without it: its devices cannot take part in secure rounds.
    aggregator_key: bytes | None = None

    @property
    def public_key(self) -> bytes:
        return signing.public_key_bytes(self.key)

    def encode(self) -> str:
        document = {
            "id": str(self.token_id),
            "fleet": self.fleet,
            "key": signing.private_key_to_bytes(self.key).hex(),
            "coordinator": self.coordinator_key.hex(),
        }
        if self.aggregator_key is not None:
            document["aggregator"] = self.aggregator_key.hex()
        raw = json.dumps(document, separators=(",", ":")).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> EnrolmentToken:
        """Parse an encoded token; raise ``InvalidToken`` saying what is wrong, never the key."""
        if len(text) > MAX_ENCODED_LENGTH or not text.startswith(PREFIX):
            raise InvalidToken(f"an enrolment token starts with {PREFIX!r}")
        body = text[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            document = json.loads(raw)
            aggregator = document.get("aggregator")
            token = cls(
                token_id=UUID(document["id"]),
                fleet=_FLEET.validate_python(document["fleet"]),
                key=signing.private_key_from_bytes(bytes.fromhex(document["key"])),
                coordinator_key=bytes.fromhex(document["coordinator"]),
                aggregator_key=None if aggregator is None else bytes.fromhex(aggregator),
            )
        except (
            binascii.Error,
            UnicodeDecodeError,
            json.JSONDecodeError,
            KeyError,
            TypeError,
            AttributeError,
            ValueError,
            ValidationError,
        ) as exc:
            raise InvalidToken("the enrolment token is damaged (copy it whole)") from exc
        try:
            ed25519_keys.check_public_key(token.coordinator_key, name="coordinator key")
            if token.aggregator_key is not None:
                ed25519_keys.check_public_key(token.aggregator_key, name="aggregator key")
        except ed25519_keys.WeakKeyError as exc:
            raise InvalidToken(f"the enrolment token's {exc}") from exc
        return token


def issue(
    fleet: str, *, coordinator_key: bytes, aggregator_key: bytes | None = None
) -> EnrolmentToken:
    """Make a new token for ``fleet`` (the caller registers its public half with the registry).

    ``aggregator_key`` None makes a token whose devices cannot take part in secure rounds.
    """
    return EnrolmentToken(
        token_id=uuid4(),
        fleet=_FLEET.validate_python(fleet),
        key=signing.generate_private_key(),
        coordinator_key=coordinator_key,
        aggregator_key=aggregator_key,
    )


def sign_enrolment(
    message: DeviceEnrolled, *, device_key: Ed25519PrivateKey, token: EnrolmentToken
) -> DeviceEnrolled:
    """Return ``message`` in ``token``'s fleet, signed by the device's key and by the token."""
    named = message.model_copy(update={"fleet": token.fleet, "enrolment_token_id": token.token_id})
    payload = signing.enrolment_payload(named)
    return named.model_copy(
        update={"signature": device_key.sign(payload), "token_signature": token.key.sign(payload)}
    )
