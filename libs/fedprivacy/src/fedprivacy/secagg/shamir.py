"""Shamir t-of-n secret sharing over the prime field GF(2^256 + 297).

Written by hand on purpose: no well-kept Python library offers Shamir sharing with an
explicit byte layout (Flower's ``shamir.py`` pickles; pycryptodome's works on 16-byte
secrets only), while every other primitive of the protocol comes from ``cryptography``.

The field: ``PRIME = 2**256 + 297``, the smallest prime above 2^256, so that every 32-byte
secret (an X25519 private key, a self-mask seed) is one field element without reduction.
A field element travels as 33 bytes, little-endian (``ELEMENT_BYTES``).

Share layout (``Share.to_bytes``, ``SHARE_BYTES`` = 36 bytes, all little-endian)::

    version  u8   = 1
    x        u16  the evaluation point, 1..65535 (never 0: f(0) is the secret)
    y        33   f(x) mod PRIME

Randomness is a parameter (``random_bytes``, default ``os.urandom``) so tests can be
deterministic; coefficients are drawn uniformly from the field by rejection sampling.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedprivacy.secagg.errors import InvalidSecAggMessage

PRIME = 2**256 + 297
ELEMENT_BYTES = 33
SHARE_VERSION = 1
SHARE_BYTES = 1 + 2 + ELEMENT_BYTES
MAX_SHARES = 0xFFFF
SECRET_BYTES = 32

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class Share:
    """One point ``(x, y)`` of the sharing polynomial."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not 1 <= self.x <= MAX_SHARES:
            raise InvalidSecAggMessage(f"share x must be in 1..{MAX_SHARES}, got {self.x}")
        if not 0 <= self.y < PRIME:
            raise InvalidSecAggMessage("share y must be a field element (0 <= y < PRIME)")

    def to_bytes(self) -> bytes:
        """Encode as the fixed 36-byte layout of the module docstring."""
        return struct.pack("<BH", SHARE_VERSION, self.x) + self.y.to_bytes(ELEMENT_BYTES, "little")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Decode the fixed layout; refuse a wrong length, version or out-of-field value."""
        if len(data) != SHARE_BYTES:
            raise InvalidSecAggMessage(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        version, x = struct.unpack_from("<BH", data)
        if version != SHARE_VERSION:
            raise InvalidSecAggMessage(f"unknown share version {version}")
        return cls(x=x, y=int.from_bytes(data[3:], "little"))


def _random_element(random_bytes: RandomBytes) -> int:
    while True:  # rejection sampling: uniform on [0, PRIME)
        value = int.from_bytes(random_bytes(ELEMENT_BYTES), "little") & ((1 << 257) - 1)
        if value < PRIME:
            return value


def create_shares(
    secret: int, *, threshold: int, num_shares: int, random_bytes: RandomBytes = os.urandom
) -> list[Share]:
    """Split ``secret`` into ``num_shares`` shares, any ``threshold`` of which recover it.

    Shares are evaluated at x = 1..num_shares.

    Raises
    ------
    ValueError
        ``threshold`` outside 1..num_shares, ``num_shares`` above 65535, or ``secret`` not a
        field element.
    """
    if not 1 <= num_shares <= MAX_SHARES:
        raise ValueError(f"num_shares must be in 1..{MAX_SHARES}, got {num_shares}")
    if not 1 <= threshold <= num_shares:
        raise ValueError(f"threshold must be in 1..num_shares={num_shares}, got {threshold}")
    if not 0 <= secret < PRIME:
        raise ValueError("secret must satisfy 0 <= secret < PRIME")
    coefficients = [secret] + [_random_element(random_bytes) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, num_shares + 1):
        y = 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % PRIME
        shares.append(Share(x=x, y=y))
    return shares


def combine_shares(shares: Sequence[Share], *, threshold: int) -> int:
    """Recover the secret from at least ``threshold`` shares (Lagrange interpolation at 0).

    Only the first ``threshold`` shares are used; duplicates of an x are refused.

    Raises
    ------
    ValueError
        Fewer than ``threshold`` shares, or two shares with the same x.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    if len({share.x for share in shares}) != len(shares):
        raise ValueError("shares must have distinct x")
    if len(shares) < threshold:
        raise ValueError(f"need {threshold} shares, got {len(shares)}")
    points = shares[:threshold]
    secret = 0
    for i, share_i in enumerate(points):
        numerator, denominator = 1, 1
        for j, share_j in enumerate(points):
            if i != j:
                numerator = numerator * share_j.x % PRIME
                denominator = denominator * (share_j.x - share_i.x) % PRIME
        secret = (secret + share_i.y * numerator * pow(denominator, -1, PRIME)) % PRIME
    return secret


def secret_to_element(secret: bytes) -> int:
    """Read a 32-byte secret as a field element (little-endian; always below PRIME)."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    return int.from_bytes(secret, "little")


def element_to_secret(element: int) -> bytes:
    """Write a recovered field element back as the 32-byte secret it came from."""
    if not 0 <= element < 1 << (8 * SECRET_BYTES):
        raise InvalidSecAggMessage("the recovered value is not a 32-byte secret")
    return element.to_bytes(SECRET_BYTES, "little")


class SecureAggregationProtocol:
    """The original design's Shamir API, kept as a thin wrapper over ``create_shares``.

    >>> protocol = SecureAggregationProtocol(threshold=3)
    >>> shares = protocol.generate_secret_shares(42, num_parties=5)
    >>> protocol.reconstruct_secret(shares[1:4])
    42
    """

    def __init__(self, *, threshold: int, random_bytes: RandomBytes = os.urandom) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self._random_bytes = random_bytes

    def generate_secret_shares(self, secret: int, *, num_parties: int) -> list[Share]:
        """Split an integer secret (0 <= secret < PRIME) among ``num_parties``."""
        return create_shares(
            secret,
            threshold=self.threshold,
            num_shares=num_parties,
            random_bytes=self._random_bytes,
        )

    def reconstruct_secret(self, shares: Sequence[Share]) -> int:
        """Recover the secret from at least ``threshold`` shares."""
        return combine_shares(shares, threshold=self.threshold)
