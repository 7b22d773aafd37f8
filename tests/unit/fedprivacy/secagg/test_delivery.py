"""Server-to-device deliveries: canonical bytes, strict parsing, deterministic ids."""

from __future__ import annotations

import contextlib
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprivacy.secagg.client import SecAggClient
from fedprivacy.secagg.delivery import (
    ADVERT_BYTES,
    CIPHERTEXT_BYTES,
    SERVER_SIGNING_LABEL,
    AdvertDelivery,
    DeliveryHeader,
    ShareDelivery,
    UnmaskingDelivery,
    message_id,
)
from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.messages import SIGNING_LABEL, Stage
from fedprivacy.secagg.server import SecAggServer
from tests.unit.fedprivacy.secagg.conftest import TASK, make_config

TO_2 = DeliveryHeader(task_id=TASK, round_number=7, recipient=2)


def _deliveries() -> list[AdvertDelivery | ShareDelivery | UnmaskingDelivery]:
    config = make_config(4, 3)
    adverts = [SecAggClient(config, index=i).advertise_keys() for i in (0, 1, 3)]
    return [
        AdvertDelivery(
            header=TO_2, adverts=tuple((a, bytes([i]) * 64) for i, a in enumerate(adverts))
        ),
        ShareDelivery(
            header=TO_2, ciphertexts=((0, b"a" * CIPHERTEXT_BYTES), (3, b"b" * CIPHERTEXT_BYTES))
        ),
        UnmaskingDelivery(header=TO_2, survivors=(0, 2, 3), dropped=(1,)),
    ]


def test_advert_bytes_are_the_advertisement_size() -> None:
    advert = SecAggClient(make_config(4, 3), index=0).advertise_keys()
    assert len(advert.to_bytes()) == ADVERT_BYTES


@pytest.mark.parametrize("delivery", _deliveries(), ids=lambda d: type(d).__name__)
def test_deliveries_round_trip_and_sign_over_task_round_stage_recipient(delivery: object) -> None:
    data = delivery.to_bytes()  # type: ignore[attr-defined]
    assert type(delivery).from_bytes(data) == delivery  # type: ignore[attr-defined]
    signed = delivery.signing_bytes()  # type: ignore[attr-defined]
    assert signed == SERVER_SIGNING_LABEL + data and not signed.startswith(SIGNING_LABEL)
    assert data[3:19] == TASK and struct.unpack_from("<II", data, 19) == (7, 2)
    for cut in (len(data) - 1, len(data) + 1):
        with pytest.raises(InvalidSecAggMessage):
            type(delivery).from_bytes((data + b"\x00")[:cut])  # type: ignore[attr-defined]
    other_recipient = data[:23] + struct.pack("<I", 5) + data[27:]
    try:
        readdressed = type(delivery).from_bytes(other_recipient)  # type: ignore[attr-defined]
    except InvalidSecAggMessage:
        readdressed = None  # not a survivor: refused outright
    assert readdressed != delivery


@pytest.mark.parametrize("delivery", _deliveries(), ids=lambda d: type(d).__name__)
def test_a_huge_count_or_another_kind_is_refused(delivery: object) -> None:
    data = delivery.to_bytes()  # type: ignore[attr-defined]
    with pytest.raises(InvalidSecAggMessage, match=r"exceeds|truncated"):
        type(delivery).from_bytes(data[:27] + b"\xff\xff\xff\xff" + data[31:])  # type: ignore[attr-defined]
    for other in _deliveries():
        if type(other) is not type(delivery):
            with pytest.raises(InvalidSecAggMessage, match="expected"):
                type(other).from_bytes(data)


def test_unordered_repeated_or_inconsistent_lists_are_refused() -> None:
    ct = b"a" * CIPHERTEXT_BYTES
    with pytest.raises(InvalidSecAggMessage, match="increasing"):
        ShareDelivery(header=TO_2, ciphertexts=((3, ct), (0, ct)))
    with pytest.raises(InvalidSecAggMessage, match="increasing"):
        ShareDelivery(header=TO_2, ciphertexts=((3, ct), (3, ct)))
    with pytest.raises(InvalidSecAggMessage, match="recipient itself"):
        ShareDelivery(header=TO_2, ciphertexts=((2, ct),))
    with pytest.raises(InvalidSecAggMessage, match="bytes"):
        ShareDelivery(header=TO_2, ciphertexts=((0, ct + b"x"),))
    with pytest.raises(InvalidSecAggMessage, match="both"):
        UnmaskingDelivery(header=TO_2, survivors=(1, 2), dropped=(1,))
    with pytest.raises(InvalidSecAggMessage, match="not a survivor"):
        UnmaskingDelivery(header=TO_2, survivors=(1, 3), dropped=())
    advert = SecAggClient(make_config(4, 3), index=2).advertise_keys()
    with pytest.raises(InvalidSecAggMessage, match="another round"):
        AdvertDelivery(header=TO_2, adverts=((advert, bytes(64)),))


def test_a_served_round_delivers_and_the_request_reaches_the_client() -> None:
    config = make_config(4, 3)
    clients = [SecAggClient(config, index=i) for i in range(4)]
    server = SecAggServer(config)
    for client in clients:
        server.receive_advertisement(client.advertise_keys())
    adverts = server.close_advertisement()
    delivery = AdvertDelivery(
        header=DeliveryHeader(task_id=TASK, round_number=7, recipient=1),
        adverts=tuple((a, bytes(64)) for a in adverts[1]),
    )
    parsed = AdvertDelivery.from_bytes(delivery.to_bytes())
    shares = clients[1].share_keys([a for a, _ in parsed.adverts])
    assert all(len(ct) == CIPHERTEXT_BYTES for _, ct in shares.ciphertexts)


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    for decode in (
        AdvertDelivery.from_bytes,
        ShareDelivery.from_bytes,
        UnmaskingDelivery.from_bytes,
    ):
        with contextlib.suppress(InvalidSecAggMessage):
            decode(data)


def test_message_ids_are_deterministic_and_distinct_per_field() -> None:
    base = {"task_id": TASK, "round_number": 7, "attempt": 0, "stage": Stage.SHARE_KEYS}
    first = message_id(**base, recipient=2)  # type: ignore[arg-type]
    assert first == message_id(**base, recipient=2)  # type: ignore[arg-type]
    assert first.version == 5 and isinstance(first, uuid.UUID)
    variants = {
        message_id(**{**base, "round_number": 8}, recipient=2),  # type: ignore[arg-type]
        message_id(**{**base, "attempt": 1}, recipient=2),  # type: ignore[arg-type]
        message_id(**{**base, "stage": Stage.UNMASKING}, recipient=2),  # type: ignore[arg-type]
        message_id(**base, recipient=3),  # type: ignore[arg-type]
        message_id(**base, recipient=None),  # type: ignore[arg-type]
        message_id(**{**base, "task_id": bytes(16)}, recipient=2),  # type: ignore[arg-type]
    }
    assert first not in variants and len(variants) == 6
    with pytest.raises(ValueError, match="attempt"):
        message_id(**{**base, "attempt": -1}, recipient=2)  # type: ignore[arg-type]
