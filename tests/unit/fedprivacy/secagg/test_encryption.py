"""AES-GCM shares in transit: tampering and misbinding (round, recipient) are refused."""

from __future__ import annotations

import os

import pytest

from fedprivacy.secagg.encryption import decrypt, encrypt, share_associated_data
from fedprivacy.secagg.errors import InvalidSecAggMessage

TASK = bytes(range(16))


def _aad(*, round_number: int = 4, recipient: int = 2, sender: int = 1, stage: int = 2) -> bytes:
    return share_associated_data(
        task_id=TASK, round_number=round_number, stage=stage, sender=sender, recipient=recipient
    )


def test_a_ciphertext_opens_with_its_own_associated_data() -> None:
    key = os.urandom(32)
    ciphertext = encrypt(key, b"shares", associated_data=_aad())
    assert decrypt(key, ciphertext, associated_data=_aad()) == b"shares"


@pytest.mark.parametrize(
    "other",
    [
        _aad(round_number=5),  # another round
        _aad(recipient=3),  # another recipient
        _aad(sender=0),  # another sender
        _aad(stage=3),  # another stage
        share_associated_data(task_id=bytes(16), round_number=4, stage=2, sender=1, recipient=2),
    ],
    ids=["round", "recipient", "sender", "stage", "task"],
)
def test_a_ciphertext_bound_elsewhere_is_refused(other: bytes) -> None:
    key = os.urandom(32)
    ciphertext = encrypt(key, b"shares", associated_data=_aad())
    with pytest.raises(InvalidSecAggMessage, match="refused"):
        decrypt(key, ciphertext, associated_data=other)


def test_a_tampered_or_truncated_ciphertext_is_refused() -> None:
    key = os.urandom(32)
    ciphertext = bytearray(encrypt(key, b"shares", associated_data=_aad()))
    ciphertext[15] ^= 1
    with pytest.raises(InvalidSecAggMessage):
        decrypt(key, bytes(ciphertext), associated_data=_aad())
    with pytest.raises(InvalidSecAggMessage, match="too short"):
        decrypt(key, bytes(20), associated_data=_aad())
    with pytest.raises(InvalidSecAggMessage):
        decrypt(os.urandom(32), bytes(ciphertext), associated_data=_aad())
