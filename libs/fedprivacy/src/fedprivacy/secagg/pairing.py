"""The keys two devices share in one round, derived the same way by devices and server.

Kept apart from ``client`` and ``server`` so that the server's recovery of a dropped
device's masks runs exactly the code the devices ran.
"""

from __future__ import annotations

import hashlib
import struct

from fedprivacy.secagg.config import RoundConfig
from fedprivacy.secagg.keys import KeyPurpose, agree, derive_key
from fedprivacy.secagg.masking import MaskedVector, expand_mask


def _context(config: RoundConfig, *numbers: int) -> bytes:
    return config.task_id + struct.pack(f"<I{len(numbers)}I", config.round_number, *numbers)


def share_encryption_key(
    config: RoundConfig, *, private_key: bytes, peer_public_key: bytes, pair: tuple[int, int]
) -> bytes:
    """AES-GCM key of the (unordered) pair, from the encryption key pairs."""
    low, high = sorted(pair)
    return derive_key(
        agree(private_key, peer_public_key),
        purpose=KeyPurpose.SHARE_ENCRYPTION,
        context=_context(config, low, high),
    )


def pairwise_mask(
    config: RoundConfig, *, private_key: bytes, peer_public_key: bytes, pair: tuple[int, int]
) -> MaskedVector:
    """The pairwise mask of the (unordered) pair: the lower index adds it, the higher one
    subtracts it, so the two cancel in the sum."""
    low, high = sorted(pair)
    key = derive_key(
        agree(private_key, peer_public_key),
        purpose=KeyPurpose.PAIRWISE_MASK,
        context=_context(config, low, high),
    )
    return expand_mask(key, length=config.vector_length, bits=config.modulus_bits)


SELF_MASK_COMMITMENT_LABEL = b"fedplat/secagg/v1/self-mask-commitment\x00"


def self_mask_commitment(config: RoundConfig, *, seed: bytes, owner: int) -> bytes:
    """SHA-256 commitment to ``owner``'s self-mask seed, bound to task, round and owner.

    Sent in the key advertisement, so that the server can check a rebuilt seed: without it
    one forged share from a malicious survivor would silently yield a wrong sum. The seed is
    32 uniform bytes, so the hash hides it.
    """
    return hashlib.sha256(SELF_MASK_COMMITMENT_LABEL + _context(config, owner) + seed).digest()


def self_mask(config: RoundConfig, *, seed: bytes, owner: int) -> MaskedVector:
    """The self mask of ``owner`` from its 32-byte seed b."""
    key = derive_key(seed, purpose=KeyPurpose.SELF_MASK, context=_context(config, owner))
    return expand_mask(key, length=config.vector_length, bits=config.modulus_bits)
