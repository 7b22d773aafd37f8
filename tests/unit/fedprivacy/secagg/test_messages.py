"""Wire formats: canonical bytes round-trip; malformed bytes are refused, never guessed at."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.messages import (
    SERVER_SENDER,
    SIGNING_LABEL,
    EncryptedShares,
    Header,
    KeyAdvertisement,
    MaskedInput,
    UnmaskingRequest,
    UnmaskingShares,
)
from fedprivacy.secagg.shamir import Share
from tests.unit.fedprivacy.secagg.conftest import TASK

HEADER = Header(task_id=TASK, round_number=7, sender=3)

MESSAGES = [
    KeyAdvertisement(
        header=HEADER,
        encryption_public_key=b"e" * 32,
        mask_public_key=b"m" * 32,
        self_mask_commitment=b"c" * 32,
    ),
    EncryptedShares(header=HEADER, ciphertexts=((1, b"x" * 40), (5, b"y" * 41))),
    MaskedInput(header=HEADER, length=5, bits=23, packed=bytes(15)),
    UnmaskingShares(
        header=HEADER,
        self_mask_shares=((1, Share(x=2, y=99)),),
        mask_key_shares=((5, Share(x=1, y=2**256)),),
    ),
    UnmaskingRequest(
        header=Header(task_id=TASK, round_number=7, sender=SERVER_SENDER),
        survivors=(0, 1, 3),
        dropped=(2,),
    ),
]
ids = [type(m).__name__ for m in MESSAGES]


@pytest.mark.parametrize("message", MESSAGES, ids=ids)
def test_messages_round_trip_and_name_task_round_stage_sender(message: object) -> None:
    encoded = message.to_bytes()  # type: ignore[attr-defined]
    assert type(message).from_bytes(encoded) == message  # type: ignore[attr-defined]
    # version, stage, task, round, sender: the first 26 bytes.
    assert encoded[0] == 1 and encoded[2:18] == TASK
    assert int.from_bytes(encoded[18:22], "little") == 7
    if hasattr(message, "signing_bytes"):
        assert message.signing_bytes() == SIGNING_LABEL + encoded


@pytest.mark.parametrize("message", MESSAGES, ids=ids)
def test_truncated_or_extended_bytes_are_refused(message: object) -> None:
    encoded = message.to_bytes()  # type: ignore[attr-defined]
    decode = type(message).from_bytes  # type: ignore[attr-defined]
    for cut in range(len(encoded)):
        with pytest.raises(InvalidSecAggMessage):
            decode(encoded[:cut])
    with pytest.raises(InvalidSecAggMessage, match="trailing"):
        decode(encoded + b"\x00")


@pytest.mark.parametrize("message", MESSAGES, ids=ids)
def test_a_wrong_version_or_stage_is_refused(message: object) -> None:
    encoded = message.to_bytes()  # type: ignore[attr-defined]
    decode = type(message).from_bytes  # type: ignore[attr-defined]
    with pytest.raises(InvalidSecAggMessage, match="version"):
        decode(b"\x02" + encoded[1:])
    with pytest.raises(InvalidSecAggMessage, match="stage"):
        decode(encoded[:1] + bytes([encoded[1] % 4 + 1]) + encoded[2:])


def test_a_count_larger_than_the_message_is_refused() -> None:
    encoded = MESSAGES[1].to_bytes()
    with pytest.raises(InvalidSecAggMessage, match="count"):
        EncryptedShares.from_bytes(encoded[:26] + (10**6).to_bytes(4, "little") + encoded[30:])


def test_duplicate_recipients_or_owners_are_refused() -> None:
    with pytest.raises(InvalidSecAggMessage, match="twice"):
        EncryptedShares(header=HEADER, ciphertexts=((1, b"x"), (1, b"y")))
    with pytest.raises(InvalidSecAggMessage, match="twice"):
        UnmaskingShares(
            header=HEADER,
            self_mask_shares=((1, Share(x=1, y=1)),),
            mask_key_shares=((1, Share(x=1, y=1)),),
        )


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    for decode in (
        KeyAdvertisement.from_bytes,
        EncryptedShares.from_bytes,
        MaskedInput.from_bytes,
        UnmaskingShares.from_bytes,
        UnmaskingRequest.from_bytes,
    ):
        with contextlib.suppress(InvalidSecAggMessage):
            decode(data)
