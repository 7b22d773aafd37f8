"""The device refuses tampered or misbound shares, bad keys, and unmasking requests that
would make it reveal both shares of a neighbour."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedprivacy.secagg.client import ProtocolStateError, SecAggClient
from fedprivacy.secagg.errors import InvalidSecAggMessage, ThresholdNotMet
from fedprivacy.secagg.messages import SERVER_SENDER, Header, UnmaskingRequest
from tests.unit.fedprivacy.secagg.conftest import make_config
from tests.unit.fedprivacy.secagg.test_keys import SMALL_ORDER_KEYS
from tests.unit.fedprivacy.secagg.test_server import to_masked_input_stage

UPDATE = np.zeros(5, dtype=np.float32)


def _send(client: SecAggClient, inbox: list[tuple[int, bytes]]) -> None:
    client.masked_input(inbox, UPDATE, num_examples=1, rng=np.random.default_rng(0))


def test_a_tampered_ciphertext_is_refused() -> None:
    _, clients, store = to_masked_input_stage()
    sender, ciphertext = store[0][0]
    flipped = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    with pytest.raises(InvalidSecAggMessage, match="refused"):
        _send(clients[0], [(sender, flipped), *store[0][1:]])


def test_a_ciphertext_for_another_recipient_is_refused() -> None:
    # Device 1's share from device 2, replayed to device 0 as if device 2 had sent it to 0.
    _, clients, store = to_masked_input_stage()
    stolen = dict(store[1])[2]
    inbox = [(s, stolen if s == 2 else ct) for s, ct in store[0]]
    with pytest.raises(InvalidSecAggMessage, match="refused"):
        _send(clients[0], inbox)


def test_a_neighbour_advertising_a_small_order_key_is_refused() -> None:
    config = make_config(4, 3)
    device, peer = SecAggClient(config, index=0), SecAggClient(config, index=1)
    device.advertise_keys()
    bad = dataclasses.replace(peer.advertise_keys(), mask_public_key=SMALL_ORDER_KEYS[2])
    with pytest.raises(InvalidSecAggMessage, match="small order"):
        device.share_keys([bad])


def test_too_few_neighbours_make_the_device_stop() -> None:
    config = make_config(10, 3)  # threshold 5
    device = SecAggClient(config, index=0)
    device.advertise_keys()
    peers = [SecAggClient(config, index=i).advertise_keys() for i in (1, 2, 3)]
    with pytest.raises(ThresholdNotMet, match="share-keys"):
        device.share_keys(peers)


@pytest.mark.parametrize(
    ("survivors", "dropped", "match"),
    [
        ((0, 1, 2, 3, 4, 5), (1,), "both"),
        ((1, 2, 3, 4, 5), (0,), "this device"),
        ((1, 2, 3, 4, 5), (), "this device"),
    ],
)
def test_an_unmasking_request_that_would_reveal_too_much_is_refused(
    survivors: tuple[int, ...], dropped: tuple[int, ...], match: str
) -> None:
    server, clients, store = to_masked_input_stage()
    _send(clients[0], store[0])
    header = Header(task_id=server.config.task_id, round_number=7, sender=SERVER_SENDER)
    request = UnmaskingRequest(header=header, survivors=survivors, dropped=dropped)
    with pytest.raises(InvalidSecAggMessage, match=match):
        clients[0].unmask(request)


def test_a_device_answers_one_unmasking_request_only() -> None:
    server, clients, store = to_masked_input_stage()
    _send(clients[0], store[0])
    header = Header(task_id=server.config.task_id, round_number=7, sender=SERVER_SENDER)
    clients[0].unmask(UnmaskingRequest(header=header, survivors=tuple(range(6)), dropped=()))
    with pytest.raises(ProtocolStateError):
        clients[0].unmask(UnmaskingRequest(header=header, survivors=(0,), dropped=(1, 2, 3, 4, 5)))


@pytest.mark.parametrize(("sender", "round_number"), [(1, 7), (SERVER_SENDER, 8)])
def test_an_unmasking_request_from_a_device_or_another_round_is_refused(
    sender: int, round_number: int
) -> None:
    _, clients, store = to_masked_input_stage()
    _send(clients[0], store[0])
    header = Header(task_id=clients[0].config.task_id, round_number=round_number, sender=sender)
    request = UnmaskingRequest(header=header, survivors=tuple(range(6)), dropped=())
    with pytest.raises(InvalidSecAggMessage, match="another round"):
        clients[0].unmask(request)
