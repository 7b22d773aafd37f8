"""X25519 key agreement and HKDF key derivation, every primitive from ``cryptography``.

Each device makes two fresh key pairs per round (Bonawitz et al. 2017, §4): one whose
agreements key the AES-GCM encryption of shares, one whose agreements seed the pairwise
masks (its private key is what gets Shamir-shared, so that the server can recover the masks
of a device that drops). Every derived key has its own HKDF ``info`` label.

Keys that prove nothing are refused: an X25519 public key of small order (the agreement with
it is a constant that an attacker knows) and an all-zero shared secret. ``SMALL_ORDER_U`` holds
the u-coordinates of every point of order 1, 2, 4 or 8 on Curve25519; a public key is
compared after clearing bit 255 and reducing modulo p, which catches every non-canonical
encoding of those points too (RFC 7748 §5 ignores bit 255; values p..2^255-1 are non-reduced).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.shamir import RandomBytes

KEY_BYTES = 32
CURVE25519_P = 2**255 - 19

# u-coordinates of the small-order points: 0 (order 4), 1 (order 1), p-1 (order 2), and the
# two points of order 8 (libsodium's blocklist, crypto_scalarmult/curve25519/ref10).
SMALL_ORDER_U: frozenset[int] = frozenset(
    {
        0,
        1,
        CURVE25519_P - 1,
        int.from_bytes(
            bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            "little",
        ),
        int.from_bytes(
            bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
            "little",
        ),
    }
)


class KeyPurpose(StrEnum):
    """What a derived key is for; each purpose is its own HKDF label."""

    SHARE_ENCRYPTION = "share-encryption"
    PAIRWISE_MASK = "pairwise-mask"
    SELF_MASK = "self-mask"


def hkdf_label(purpose: KeyPurpose) -> bytes:
    """Return the HKDF ``info`` of ``purpose``: ``fedplat/secagg/v1/<purpose>``."""
    return f"fedplat/secagg/v1/{purpose.value}".encode()


def check_public_key(public_key: bytes) -> None:
    """Refuse a public key that is not 32 bytes or encodes a small-order point.

    Raises
    ------
    InvalidSecAggMessage
        With the reason.
    """
    if len(public_key) != KEY_BYTES:
        raise InvalidSecAggMessage(
            f"an X25519 public key is {KEY_BYTES} bytes, got {len(public_key)}"
        )
    u = (int.from_bytes(public_key, "little") & ((1 << 255) - 1)) % CURVE25519_P
    if u in SMALL_ORDER_U:
        raise InvalidSecAggMessage("X25519 public key of small order refused (proves nothing)")


def derive_key(shared_secret: bytes, *, purpose: KeyPurpose, context: bytes = b"") -> bytes:
    """Derive a 32-byte key for ``purpose`` from a full 32-byte secret with HKDF-SHA256.

    ``context`` (task, round, the pair) is appended to the label so that no two rounds or
    pairs ever share a derived key, even if a key pair were reused by mistake.

    Raises
    ------
    InvalidSecAggMessage
        An all-zero shared secret (what a small-order public key produces).
    """
    if len(shared_secret) != KEY_BYTES:
        raise ValueError(f"shared_secret must be {KEY_BYTES} bytes, got {len(shared_secret)}")
    if hmac.compare_digest(shared_secret, bytes(KEY_BYTES)):
        raise InvalidSecAggMessage("all-zero X25519 shared secret refused")
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=hkdf_label(purpose) + context
    )
    return hkdf.derive(shared_secret)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """One X25519 key pair, held as raw 32-byte encodings (what goes on the wire and what is
    Shamir-shared)."""

    private_key: bytes
    public_key: bytes

    @classmethod
    def generate(cls, random_bytes: RandomBytes = os.urandom) -> KeyPair:
        """Make a fresh key pair from 32 bytes of ``random_bytes`` (clamped by X25519)."""
        private = X25519PrivateKey.from_private_bytes(random_bytes(KEY_BYTES))
        return cls(
            private_key=private.private_bytes_raw(),
            public_key=private.public_key().public_bytes_raw(),
        )


def agree(private_key: bytes, peer_public_key: bytes) -> bytes:
    """X25519 agreement with a checked peer key; returns the raw 32-byte shared secret.

    Raises
    ------
    InvalidSecAggMessage
        A small-order peer key or an all-zero result.
    """
    check_public_key(peer_public_key)
    try:
        shared = X25519PrivateKey.from_private_bytes(private_key).exchange(
            X25519PublicKey.from_public_bytes(peer_public_key)
        )
    except ValueError as exc:  # OpenSSL refuses an all-zero result itself
        raise InvalidSecAggMessage(f"X25519 agreement refused: {exc}") from exc
    if hmac.compare_digest(shared, bytes(KEY_BYTES)):
        raise InvalidSecAggMessage("all-zero X25519 shared secret refused")
    return shared


def public_key_of(private_key: bytes) -> bytes:
    """Return the raw public key of a raw X25519 private key (to check a recovered key)."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()
