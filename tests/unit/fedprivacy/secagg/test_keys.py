"""X25519 keys that prove nothing are refused; HKDF labels differ per purpose."""

from __future__ import annotations

import pytest

from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.keys import (
    KeyPair,
    KeyPurpose,
    agree,
    check_public_key,
    derive_key,
    hkdf_label,
)

P = 2**255 - 19
_ORDER_8_A = "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"
_ORDER_8_B = "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"


def _le(value: int) -> bytes:
    return value.to_bytes(32, "little")


# The standard list (libsodium's blocklist): 0, 1, the two order-8 points, p-1, p, p+1;
# then the non-canonical encodings of the same points with bit 255 set (X25519 ignores it).
CANONICAL_SMALL_ORDER = [
    _le(0),
    _le(1),
    bytes.fromhex(_ORDER_8_A),
    bytes.fromhex(_ORDER_8_B),
    _le(P - 1),
    _le(P),
    _le(P + 1),
]
SMALL_ORDER_KEYS = CANONICAL_SMALL_ORDER + [
    key[:31] + bytes([key[31] | 0x80]) for key in CANONICAL_SMALL_ORDER
]


@pytest.mark.parametrize(
    "public_key", SMALL_ORDER_KEYS, ids=lambda key: key.hex()[:8] + key.hex()[-4:]
)
def test_small_order_public_keys_are_refused(public_key: bytes) -> None:
    # Prepare
    mine = KeyPair.generate()

    # Execute / Assert: both the check and the agreement refuse it.
    with pytest.raises(InvalidSecAggMessage, match="small order"):
        check_public_key(public_key)
    with pytest.raises(InvalidSecAggMessage):
        agree(mine.private_key, public_key)


def test_an_all_zero_shared_secret_is_refused() -> None:
    with pytest.raises(InvalidSecAggMessage, match="all-zero"):
        derive_key(bytes(32), purpose=KeyPurpose.PAIRWISE_MASK)


def test_a_public_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(InvalidSecAggMessage, match="32 bytes"):
        check_public_key(bytes(31))


def test_two_devices_agree_and_each_purpose_derives_its_own_key() -> None:
    # Prepare
    alice, bob = KeyPair.generate(), KeyPair.generate()

    # Execute
    shared = agree(alice.private_key, bob.public_key)
    keys = {purpose: derive_key(shared, purpose=purpose) for purpose in KeyPurpose}

    # Assert
    assert shared == agree(bob.private_key, alice.public_key)
    assert len(set(keys.values())) == len(KeyPurpose)
    assert len({hkdf_label(purpose) for purpose in KeyPurpose}) == len(KeyPurpose)
    assert (
        derive_key(shared, purpose=KeyPurpose.PAIRWISE_MASK, context=b"round 2")
        != keys[KeyPurpose.PAIRWISE_MASK]
    )
