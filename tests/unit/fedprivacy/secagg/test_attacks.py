"""Attacks by a device or a server on the SecAgg+ state machines; each must fail closed."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import struct

import numpy as np
import pytest

from fedprivacy.secagg.client import SecAggClient
from fedprivacy.secagg.config import RoundConfig
from fedprivacy.secagg.encoding import encode_update
from fedprivacy.secagg.errors import InvalidSecAggMessage, SecAggError
from fedprivacy.secagg.messages import SERVER_SENDER, Header, UnmaskingRequest
from fedprivacy.secagg.server import SecAggServer
from fedprivacy.secagg.shamir import PRIME, Share
from tests.unit.fedprivacy.secagg.conftest import TASK, make_config
from tests.unit.fedprivacy.secagg.test_server import to_masked_input_stage


def _to_unmasking(dropped: int | None) -> tuple[SecAggServer, list[SecAggClient], UnmaskingRequest]:
    server, clients, store = to_masked_input_stage(n=6, dim=4)
    rng = np.random.default_rng(0)
    for client in clients:
        if client.index == dropped:
            continue
        server.receive_masked_input(
            client.masked_input(
                store[client.index], np.zeros(4, dtype=np.float32), num_examples=3, rng=rng
            )
        )
    return server, clients, server.close_masked_input()


def _forge(share: Share) -> Share:
    # Not +1: X25519 clamps the low 3 bits of a private key, so a tiny shift of the rebuilt
    # mask key gives the same key (and the same masks); shift a high bit instead.
    return Share(x=share.x, y=(share.y + (1 << 100)) % PRIME)


@pytest.mark.parametrize("kind", ["self_mask_shares", "mask_key_shares"])
def test_a_forged_share_never_yields_a_wrong_sum(kind: str) -> None:
    """A malicious survivor alters one share it reveals: the server must refuse to finish
    (a wrong aggregate must never come out), whatever the shell does with the error."""
    server, clients, request = _to_unmasking(dropped=5)
    first = True
    for client in clients[:5]:
        answer = client.unmask(request)
        if first:
            shares = getattr(answer, kind)
            forged = ((shares[0][0], _forge(shares[0][1])), *shares[1:])
            answer = dataclasses.replace(answer, **{kind: forged})
            first = False
        with contextlib.suppress(InvalidSecAggMessage):  # a shell logs it and goes on
            server.receive_unmasking(answer)
    with pytest.raises(SecAggError):
        server.finish()


def test_an_unmasking_answer_is_checked_whole_before_any_state_changes() -> None:
    server, clients, request = _to_unmasking(dropped=None)
    answer = clients[0].unmask(request)
    bad = dataclasses.replace(
        answer,
        self_mask_shares=(*answer.self_mask_shares[:1], (99, answer.self_mask_shares[1][1])),
    )
    with pytest.raises(InvalidSecAggMessage):
        server.receive_unmasking(bad)
    server.receive_unmasking(answer)  # the honest answer is still accepted afterwards


@pytest.mark.parametrize("clip_norm", [math.inf, math.nan, -1.0, 0.0])
def test_a_non_finite_or_non_positive_clip_norm_is_refused(clip_norm: float) -> None:
    with pytest.raises(ValueError, match="clip_norm"):
        dataclasses.replace(make_config(4, 3), clip_norm=clip_norm)
    with pytest.raises(ValueError, match="clip_norm"):
        encode_update(
            np.zeros(3, dtype=np.float32),
            num_examples=1,
            clip_norm=clip_norm,
            weight_cap=1,
            bits=8,
            clip_bit=False,
            rng=np.random.default_rng(0),
        )


def test_the_weight_and_clip_bit_of_n_devices_at_the_cap_fit_the_modulus() -> None:
    config = RoundConfig.create(
        task_id=TASK,
        round_number=1,
        num_clients=1000,
        dim=2,
        bits=8,
        clip_norm=1.0,
        weight_cap=255,
        graph_seed=bytes(32),
        clip_bit=True,
    )
    one = encode_update(
        np.full(2, 10.0, dtype=np.float32),
        num_examples=10**9,
        clip_norm=config.clip_norm,
        weight_cap=config.weight_cap,
        bits=config.bits,
        clip_bit=True,
        rng=np.random.default_rng(0),
    )
    assert int(one.max()) <= (1 << config.bits) - 1
    assert config.num_clients * int(one.max()) < 1 << config.modulus_bits


@pytest.mark.parametrize(
    ("survivors", "dropped", "sender", "match"),
    [
        ((0, 1), (1,), SERVER_SENDER, "both"),
        ((1, 0), (), SERVER_SENDER, "twice or unsorted"),
        ((0, 0, 1), (), SERVER_SENDER, "twice or unsorted"),
        ((0, 1), (), 3, "not sent by the server"),
    ],
)
def test_an_unmasking_request_listing_a_device_twice_or_not_from_the_server_is_refused(
    survivors: tuple[int, ...], dropped: tuple[int, ...], sender: int, match: str
) -> None:
    honest = UnmaskingRequest(
        header=Header(task_id=TASK, round_number=7, sender=SERVER_SENDER),
        survivors=(0, 1),
        dropped=(2,),
    )
    data = honest.to_bytes()
    forged = (
        data[:22]
        + struct.pack("<I", sender)
        + struct.pack(f"<I{len(survivors)}I", len(survivors), *survivors)
        + struct.pack(f"<I{len(dropped)}I", len(dropped), *dropped)
    )
    with pytest.raises(InvalidSecAggMessage, match=match):
        UnmaskingRequest.from_bytes(forged)
