"""The server refuses what proves nothing or does not fit, stage by stage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedprivacy.secagg.client import ProtocolStateError, SecAggClient
from fedprivacy.secagg.encoding import pack
from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.messages import Header, MaskedInput
from fedprivacy.secagg.server import SecAggServer
from tests.unit.fedprivacy.secagg.conftest import make_config
from tests.unit.fedprivacy.secagg.test_keys import SMALL_ORDER_KEYS

Inbox = dict[int, list[tuple[int, bytes]]]


def to_masked_input_stage(
    n: int = 6, dim: int = 5
) -> tuple[SecAggServer, list[SecAggClient], Inbox]:
    """Run advertise and share keys with every device; return the server, devices, inboxes."""
    config = make_config(n, dim)
    clients = [SecAggClient(config, index=i) for i in range(n)]
    server = SecAggServer(config)
    for client in clients:
        server.receive_advertisement(client.advertise_keys())
    store: Inbox = {}
    for device, adverts in server.close_advertisement().items():
        shares = clients[device].share_keys(adverts)
        server.receive_encrypted_shares(shares)
        for recipient, ciphertext in shares.ciphertexts:
            store.setdefault(recipient, []).append((device, ciphertext))
    server.close_share_keys()
    return server, clients, store


@pytest.mark.parametrize("public_key", SMALL_ORDER_KEYS[:7] + SMALL_ORDER_KEYS[8:9])
def test_a_small_order_key_in_an_advertisement_is_refused(public_key: bytes) -> None:
    config = make_config(4, 3)
    server = SecAggServer(config)
    honest = SecAggClient(config, index=0).advertise_keys()
    for field in ("encryption_public_key", "mask_public_key"):
        with pytest.raises(InvalidSecAggMessage, match="small order"):
            server.receive_advertisement(dataclasses.replace(honest, **{field: public_key}))


def test_duplicate_other_round_and_out_of_order_messages_are_refused() -> None:
    config = make_config(4, 3)
    server = SecAggServer(config)
    advert = SecAggClient(config, index=0).advertise_keys()
    server.receive_advertisement(advert)
    with pytest.raises(InvalidSecAggMessage, match="twice"):
        server.receive_advertisement(advert)
    other_round = dataclasses.replace(
        advert, header=Header(task_id=config.task_id, round_number=8, sender=1)
    )
    with pytest.raises(InvalidSecAggMessage, match="another task or round"):
        server.receive_advertisement(other_round)
    outsider = dataclasses.replace(advert, header=dataclasses.replace(advert.header, sender=4))
    with pytest.raises(InvalidSecAggMessage, match="not in the round"):
        server.receive_advertisement(outsider)
    with pytest.raises(ProtocolStateError):
        server.finish()


def _masked(config_bits: int, length: int, values: np.ndarray, sender: int = 0) -> MaskedInput:
    header = Header(task_id=make_config(6, 5).task_id, round_number=7, sender=sender)
    return MaskedInput(
        header=header, length=length, bits=config_bits, packed=pack(values, bits=config_bits)
    )


def test_a_masked_input_of_wrong_length_bits_or_padding_is_refused() -> None:
    # Prepare: a server waiting for masked inputs of 6 elements modulo 2^19 (16 + 3 bits).
    server, _, _ = to_masked_input_stage()
    k = server.config.modulus_bits
    length = server.config.vector_length
    good = np.arange(length, dtype=np.uint64)

    # Execute / Assert
    with pytest.raises(InvalidSecAggMessage, match="elements"):
        server.receive_masked_input(_masked(k, length - 1, good[:-1]))
    with pytest.raises(InvalidSecAggMessage, match="elements"):
        server.receive_masked_input(_masked(k + 1, length, good))
    padded = _masked(k, length, good)
    last = padded.packed[-1] | 0x80  # 6 * 19 = 114 bits: the last byte has 6 padding bits
    with pytest.raises(InvalidSecAggMessage, match="padding"):
        server.receive_masked_input(
            dataclasses.replace(padded, packed=padded.packed[:-1] + bytes([last]))
        )
    with pytest.raises(InvalidSecAggMessage, match="packed size"):
        dataclasses.replace(padded, packed=padded.packed + b"\x00")
    server.receive_masked_input(padded)
    with pytest.raises(InvalidSecAggMessage, match="repeated"):
        server.receive_masked_input(padded)


def test_the_server_keeps_the_graph_as_an_array_and_builds_adverts_on_demand() -> None:
    config = make_config(40, 3)
    server = SecAggServer(config)
    client_config = make_config(40, 3)  # the devices' own copy of the public parameters
    clients = [SecAggClient(client_config, index=i) for i in range(40)]
    for client in clients:
        server.receive_advertisement(client.advertise_keys())
    adverts = server.close_advertisement()
    assert "neighbours" not in vars(config)  # no tuple-of-tuples graph on the server
    assert config.neighbour_array.dtype == np.int32
    assert [list(row) for row in config.neighbour_array] == [
        list(row) for row in client_config.neighbours
    ]
    assert len(adverts) == 40 and sorted(adverts) == list(range(40))
    assert [a.header.sender for a in adverts[3]] == list(client_config.neighbours[3])
    clients[3].share_keys(adverts[3])  # the rebuilt advertisements are the devices' own
