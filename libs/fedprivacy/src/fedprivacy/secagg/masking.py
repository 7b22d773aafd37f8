"""Masks expanded from a 32-byte key by a ChaCha20 keystream, and arithmetic modulo 2^k.

A mask of ``length`` elements modulo ``2**bits`` is the ChaCha20 keystream (``cryptography``,
key = a 32-byte HKDF output of the full shared secret, fixed zero nonce: each key masks one
vector once) read as little-endian ``uint32`` (``bits <= 32``) or ``uint64`` words and
reduced with a bitmask. Because 2^bits divides 2^32 (or 2^64), the reduced words are exactly
uniform. One keystream call per mask; all vector work in ``uint64`` numpy arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

MaskedVector = npt.NDArray[np.uint64]

MAX_MODULUS_BITS = 62
_ZERO_NONCE = bytes(16)


def check_modulus_bits(bits: int) -> None:
    """Refuse a modulus that is not 2^bits with 1 <= bits <= 62 (sums stay in uint64)."""
    if not 1 <= bits <= MAX_MODULUS_BITS:
        raise ValueError(f"modulus bits must be in 1..{MAX_MODULUS_BITS}, got {bits}")


def expand_mask(key: bytes, *, length: int, bits: int) -> MaskedVector:
    """Expand ``key`` into ``length`` uniform integers modulo ``2**bits``."""
    check_modulus_bits(bits)
    if len(key) != 32:
        raise ValueError(f"mask key must be 32 bytes, got {len(key)}")
    word = np.dtype("<u4") if bits <= 32 else np.dtype("<u8")
    encryptor = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(length * word.itemsize))
    words = np.frombuffer(stream, dtype=word).astype(np.uint64)
    words &= np.uint64((1 << bits) - 1)
    return words


def add_mod(a: MaskedVector, b: MaskedVector, *, bits: int) -> MaskedVector:
    """Return ``(a + b) mod 2**bits`` as a new array."""
    return (a + b) & np.uint64((1 << bits) - 1)


def subtract_mod(a: MaskedVector, b: MaskedVector, *, bits: int) -> MaskedVector:
    """Return ``(a - b) mod 2**bits`` as a new array (uint64 wrap-around, then the bitmask)."""
    return (a - b) & np.uint64((1 << bits) - 1)
