"""Keys that prove nothing are refused: small-order and non-canonical Ed25519 public keys, keys
that name no point, and signatures with S >= L; every key a real private key makes passes."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcommon import ed25519_keys, signing
from fedcommon.ed25519_keys import L, P, WeakKeyError, check_public_key, check_signature
from fedcommon.errors import ProtocolViolation

# libsodium's blocklist of small-order encodings (crypto_sign/ed25519/ref10/open.c,
# ge25519_has_small_order), compared with the sign bit cleared: the canonical y of the eight
# points of order dividing 8, plus p and p + 1 (non-canonical encodings of y = 0 and y = 1).
LIBSODIUM_BLOCKLIST = [
    bytes.fromhex(h)
    for h in (
        # 0 (order 4)
        "0000000000000000000000000000000000000000000000000000000000000000",
        # 1 (order 1: the identity)
        "0100000000000000000000000000000000000000000000000000000000000000",
        # order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        # p - 1 (order 2)
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        # p (= 0, order 4, non-canonical)
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        # p + 1 (= 1, order 1, non-canonical)
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
]
IDENTITY = LIBSODIUM_BLOCKLIST[1]
MESSAGE = b"fedengine"


def _with_sign_bit(encoded: bytes) -> bytes:
    return encoded[:31] + bytes([encoded[31] ^ 0x80])


def _encode_y(y: int, *, sign: int = 0) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


# Every encoding of y >= p (19 values of y, both signs): non-canonical, whatever point it names.
NON_CANONICAL = [_encode_y(y, sign=s) for y in range(P, 2**255) for s in (0, 1)]


@pytest.mark.parametrize(
    "encoded",
    LIBSODIUM_BLOCKLIST + [_with_sign_bit(e) for e in LIBSODIUM_BLOCKLIST],
    ids=lambda e: e.hex()[:8] + "…" + e.hex()[-2:],
)
def test_every_libsodium_small_order_encoding_and_its_sign_flip_is_refused(
    encoded: bytes,
) -> None:
    with pytest.raises(WeakKeyError, match=r"^public_key "):
        check_public_key(encoded)
    assert not ed25519_keys.is_sound_public_key(encoded)


@pytest.mark.parametrize("encoded", NON_CANONICAL, ids=lambda e: e.hex()[:4] + "…" + e.hex()[-2:])
def test_every_non_canonical_encoding_is_refused(encoded: bytes) -> None:
    with pytest.raises(WeakKeyError, match="canonical"):
        check_public_key(encoded)


def test_the_small_order_points_are_refused_for_their_order_not_a_list() -> None:
    # The canonical ones in the list decode to points (so it is [8]P = identity that refuses
    # them), except the all-zero key, refused by name, and the identity with its sign bit set
    # (x = 0 has no negative: RFC 8032 decoding fails).
    for encoded in LIBSODIUM_BLOCKLIST[1:5]:
        with pytest.raises(WeakKeyError, match="small order"):
            check_public_key(encoded)
    with pytest.raises(WeakKeyError, match="all zero"):
        check_public_key(bytes(32))
    with pytest.raises(WeakKeyError, match="decoding fails"):
        check_public_key(_with_sign_bit(IDENTITY))


def _on_curve(y: int) -> bool:
    """Whether some x has -x^2 + y^2 = 1 + d x^2 y^2: Euler's criterion on x^2 (independent of
    the square root the module computes)."""
    x2 = (y * y - 1) * pow(ed25519_keys.D * y * y + 1, P - 2, P) % P
    return x2 == 0 or pow(x2, (P - 1) // 2, P) == 1


def test_a_y_that_names_no_point_is_refused() -> None:
    off_curve = [y for y in range(2, 40) if not _on_curve(y)]
    assert off_curve  # about half of all y
    for y in off_curve:
        with pytest.raises(WeakKeyError, match="not an Ed25519 point"):
            check_public_key(_encode_y(y))


def test_wrong_lengths_are_refused_naming_the_field() -> None:
    good = signing.public_key_bytes(signing.generate_private_key())
    for raw in (b"", good[:31], good + b"\x00"):
        with pytest.raises(WeakKeyError, match=r"^device_key must be 32 bytes$"):
            check_public_key(raw, name="device_key")


def test_the_error_never_carries_the_key() -> None:
    for encoded in LIBSODIUM_BLOCKLIST + NON_CANONICAL[:4]:
        with pytest.raises(WeakKeyError) as refused:
            check_public_key(encoded)
        assert encoded.hex() not in str(refused.value)


def test_a_thousand_generated_keys_are_accepted() -> None:
    for _ in range(1000):
        check_public_key(Ed25519PrivateKey.generate().public_key().public_bytes_raw())


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_every_private_key_gives_a_sound_public_key(seed: bytes) -> None:
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert ed25519_keys.is_sound_public_key(public)


def test_a_sound_key_plus_a_small_order_point_is_not_small_order() -> None:
    # [8](A + T) = [8]A: a mixed-order key is not refused (it proves as much as A; the check is
    # for keys that prove nothing).
    key = signing.public_key_bytes(signing.generate_private_key())
    point = ed25519_keys._decode_point(key)
    torsion = ed25519_keys._decode_point(LIBSODIUM_BLOCKLIST[2])
    assert point is not None and torsion is not None
    mixed = ed25519_keys._add(point, torsion)
    x, y = mixed
    check_public_key(_encode_y(y, sign=x & 1))


def test_openssl_believes_small_order_keys_and_signing_verify_does_not() -> None:
    # Why this module exists: cryptography (OpenSSL) verifies R = identity, S = 0 under the
    # identity key for any message, and the all-zero signature under the all-zero key for
    # about one message in four.
    forged = IDENTITY + bytes(32)
    Ed25519PublicKey.from_public_bytes(IDENTITY).verify(forged, MESSAGE)
    with pytest.raises(ProtocolViolation, match="small order"):
        signing.verify(public_key=IDENTITY, signature=forged, payload=MESSAGE)

    zero = bytes(32)
    believed = []
    for i in range(40):
        try:
            Ed25519PublicKey.from_public_bytes(zero).verify(bytes(64), b"%d" % i)
            believed.append(b"%d" % i)
        except InvalidSignature:
            pass
    assert believed
    for payload in believed:
        with pytest.raises(ProtocolViolation, match="all zero"):
            signing.verify(public_key=zero, signature=bytes(64), payload=payload)


def test_a_signature_with_s_at_or_past_l_is_refused() -> None:
    private = signing.generate_private_key()
    good = private.sign(MESSAGE)
    s = int.from_bytes(good[32:], "little")
    malleated = good[:32] + (s + L).to_bytes(32, "little")
    # OpenSSL refuses S >= L itself (pinned here: were that ever to change, check_signature
    # still holds); signing.verify refuses before asking it.
    with pytest.raises(InvalidSignature):
        private.public_key().verify(malleated, MESSAGE)
    with pytest.raises(WeakKeyError, match="S >= L"):
        check_signature(malleated)
    with pytest.raises(ProtocolViolation, match="S >= L"):
        signing.verify(
            public_key=signing.public_key_bytes(private), signature=malleated, payload=MESSAGE
        )
    check_signature(good)
    check_signature(bytes(32) + (L - 1).to_bytes(32, "little"))
    with pytest.raises(WeakKeyError, match="S >= L"):
        check_signature(bytes(32) + L.to_bytes(32, "little"))
    with pytest.raises(WeakKeyError, match="64 bytes"):
        check_signature(good[:63])


def test_constants_are_the_rfc_8032_ones() -> None:
    # The base point (RFC 8032, 5.1) decodes, is not small order, and [L]B is the identity.
    base = bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666")
    point = ed25519_keys._decode_point(base)
    assert point is not None
    assert point[0] == (
        15112221349535400772501151409588531511454012693041857206046113283949847762202
    )
    check_public_key(base)
    total, addend, n = ed25519_keys._IDENTITY, point, L
    while n:
        if n & 1:
            total = ed25519_keys._add(total, addend)
        addend = ed25519_keys._add(addend, addend)
        n >>= 1
    assert total == ed25519_keys._IDENTITY
