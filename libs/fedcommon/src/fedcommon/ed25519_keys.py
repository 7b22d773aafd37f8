"""Refuse Ed25519 public keys and signatures that prove nothing.

A public key of small order (its point times the cofactor 8 is the identity) lets a forger
"verify" made-up signatures: with the identity point as key, R = identity and S = 0 verify for
every message; with the all-zero key (a point of order 4), an all-zero signature verifies for
about one message in four. A non-canonical encoding (y >= p) names a point that has another,
canonical encoding, so two different keys would be one identity. RFC 8032 verifiers are allowed
to accept all of these, and ``cryptography`` (OpenSSL) does: it has no small-order or
canonicality check for public keys (``Ed25519PublicKey.from_public_bytes`` takes any 32 bytes),
so we check here, with plain integer arithmetic. It runs once per key handled, not per byte of
data, so clarity beats speed.

Paper: "Taming the many EdDSAs", Chalkias, Garillot, Nikolaenko (https://eprint.iacr.org/2020/1244),
section 3 (small-order and non-canonical points); decoding follows RFC 8032, section 5.1.3.
"""

from __future__ import annotations

import functools

KEY_BYTES = 32
SIGNATURE_BYTES = 64

# The field prime, the curve constant d = -121665/121666 and the prime group order L (RFC 8032,
# section 5.1).
P = 2**255 - 19
D = (-121665 * pow(121666, P - 2, P)) % P
L = 2**252 + 27742317777372353535851937790883648493
COFACTOR = 8
# sqrt(-1) mod p, the factor that fixes a square root of the wrong sign.
_SQRT_M1 = pow(2, (P - 1) // 4, P)

_Point = tuple[int, int]
_IDENTITY: _Point = (0, 1)


class WeakKeyError(ValueError):
    """An Ed25519 public key or signature that must not be trusted."""


def _decode_point(encoded: bytes) -> _Point | None:
    """Return the affine point ``encoded`` names per RFC 8032, 5.1.3, or None when it names none.

    Non-canonical encodings (y >= p) are refused here, as RFC 8032 step 1 says.
    """
    number = int.from_bytes(encoded, "little")
    sign = number >> 255
    y = number & ((1 << 255) - 1)
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = (u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P)) % P
    if (v * x * x - u) % P != 0:
        if (v * x * x + u) % P != 0:
            return None  # y names no point on the curve
        x = (x * _SQRT_M1) % P
    if x == 0 and sign == 1:
        return None
    if x % 2 != sign:
        x = P - x
    return (x, y)


def _add(a: _Point, b: _Point) -> _Point:
    """Return a + b on the twisted Edwards curve -x^2 + y^2 = 1 + d x^2 y^2 (complete formula)."""
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return (x3, y3)


def _times_cofactor(point: _Point) -> _Point:
    """Return [8] point, by three doublings."""
    for _ in range(3):
        point = _add(point, point)
    return point


def check_public_key(public_key: bytes, *, name: str = "public_key") -> None:
    """Raise ``WeakKeyError`` unless ``public_key`` is a sound Ed25519 public key.

    Sound means: 32 bytes, a canonical encoding (y < p) of a point on the curve (RFC 8032,
    5.1.3), and not of small order ([8]A is not the identity). Every key
    ``Ed25519PrivateKey.generate()`` makes passes.

    Parameters
    ----------
    public_key:
        The raw 32-byte encoding.
    name:
        The field the key came in, named in the error (never the key itself).

    Raises
    ------
    WeakKeyError
        Naming ``name`` and the reason: wrong length, all zero, non-canonical, not on the
        curve, or of small order.
    """
    reason = _key_refusal(bytes(public_key))
    if reason is not None:
        raise WeakKeyError(f"{name} {reason}")


@functools.lru_cache(maxsize=65_536)
def _key_refusal(public_key: bytes) -> str | None:
    """Why ``public_key`` is refused (None: sound). Cached per key: every signature check
    asks, and the pure-Python decoding costs about 0.7 ms, eight times OpenSSL's verify, for
    the few keys a process sees again and again (its devices', its peers')."""
    if len(public_key) != KEY_BYTES:
        return f"must be {KEY_BYTES} bytes"
    if not any(public_key):
        return "is all zero (a point of small order)"
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    if y >= P:
        return "is not a canonical Ed25519 encoding (y >= 2^255 - 19)"
    point = _decode_point(public_key)
    if point is None:
        return "is not an Ed25519 point (RFC 8032 decoding fails)"
    if _times_cofactor(point) == _IDENTITY:
        return "is a point of small order, which proves nothing"
    return None


def is_sound_public_key(public_key: bytes) -> bool:
    """Return whether ``check_public_key`` accepts ``public_key``."""
    try:
        check_public_key(public_key)
    except WeakKeyError:
        return False
    return True


def check_signature(signature: bytes, *, name: str = "signature") -> None:
    """Raise ``WeakKeyError`` unless ``signature`` is 64 bytes with a canonical S (S < L).

    RFC 8032, 5.1.7 step 1 requires it; OpenSSL checks it too (tests/unit/test_ed25519_keys.py
    pins that), so this is belt and braces, and cheap. R is decoded by the verifier itself.
    """
    if len(signature) != SIGNATURE_BYTES:
        raise WeakKeyError(f"{name} must be {SIGNATURE_BYTES} bytes")
    if int.from_bytes(signature[32:], "little") >= L:
        raise WeakKeyError(f"{name} is not canonical (S >= L)")
