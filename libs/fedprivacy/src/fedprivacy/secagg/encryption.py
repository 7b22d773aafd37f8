"""AES-256-GCM for shares in transit, with associated data that binds where they belong.

The ciphertext is ``nonce (12 random bytes) || ct || tag``. The associated data names the
task, round, stage, sender and recipient (``share_associated_data``), so a ciphertext
replayed into another round or handed to another recipient fails authentication.
``InvalidTag`` becomes ``InvalidSecAggMessage`` here, at the module boundary.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.shamir import RandomBytes

NONCE_BYTES = 12
TAG_BYTES = 16
AAD_PREFIX = b"fedplat/secagg/v1/share-aad"


def share_associated_data(
    *, task_id: bytes, round_number: int, stage: int, sender: int, recipient: int
) -> bytes:
    """Return the canonical associated data of one encrypted share bundle."""
    return AAD_PREFIX + task_id + struct.pack("<IBII", round_number, stage, sender, recipient)


def encrypt(
    key: bytes, plaintext: bytes, *, associated_data: bytes, random_bytes: RandomBytes = os.urandom
) -> bytes:
    """Encrypt with a fresh random 12-byte nonce; returns ``nonce || ciphertext``."""
    nonce = random_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, ciphertext: bytes, *, associated_data: bytes) -> bytes:
    """Decrypt ``nonce || ciphertext``.

    Raises
    ------
    InvalidSecAggMessage
        A truncated, tampered or misbound ciphertext (wrong key or associated data).
    """
    if len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise InvalidSecAggMessage("encrypted share too short")
    try:
        return AESGCM(key).decrypt(
            ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], associated_data
        )
    except InvalidTag as exc:
        raise InvalidSecAggMessage(
            "encrypted share refused: tampered, or bound to another task, round, stage, "
            "sender or recipient"
        ) from exc
