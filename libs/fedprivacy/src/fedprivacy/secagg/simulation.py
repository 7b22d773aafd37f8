"""Run a whole SecAgg+ round in one process: the reference driver for tests and the bench.

It plays the shell's part (routing, the store of ciphertexts, deciding who dropped) with
no I/O, so tests and ``fedengine bench secagg`` run exactly the client and server code a
real deployment runs. ``drop_before[device] = stage`` makes that device send nothing from
``stage`` on (ADVERTISE_KEYS: never joins; UNMASKING: sent its masked input, then left).
A device whose own threshold check fails (too few live neighbours) drops out, as a real
device would. A ``Meter`` sees every client and server call, so the bench can time and measure them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TypeVar

import numpy as np

from fedprivacy.secagg.client import SecAggClient
from fedprivacy.secagg.config import RoundConfig
from fedprivacy.secagg.encoding import FloatVector
from fedprivacy.secagg.errors import ThresholdNotMet
from fedprivacy.secagg.messages import Stage
from fedprivacy.secagg.server import AggregateResult, SecAggServer
from fedprivacy.secagg.shamir import RandomBytes

T = TypeVar("T")


class Meter:
    """Hooks around each call; the default just calls."""

    def client(self, index: int, call: Callable[[], T]) -> T:
        return call()

    def server(self, call: Callable[[], T]) -> T:
        return call()

    def upload(self, index: int, size: int) -> None:
        """Record ``size`` bytes sent by device ``index`` (its signed message's bytes)."""


def _attempt(meter: Meter, index: int, call: Callable[[], T]) -> T | None:
    """Run a device's step; a device that cannot go on (too few neighbours) drops out."""
    try:
        return meter.client(index, call)
    except ThresholdNotMet:
        return None


def run_round(
    config: RoundConfig,
    updates: Sequence[FloatVector],
    *,
    num_examples: Sequence[int],
    rng: np.random.Generator,
    drop_before: Mapping[int, Stage] | None = None,
    meter: Meter | None = None,
    random_bytes: RandomBytes = os.urandom,
) -> AggregateResult:
    """Run one round with every device in-process; return the server's result.

    Raises whatever the protocol raises (``ThresholdNotMet`` when too few survive).
    """
    meter = meter or Meter()
    drops = drop_before or {}

    def sends(device: int, stage: Stage) -> bool:
        return device not in drops or drops[device] > stage

    server = meter.server(partial(SecAggServer, config))  # first: it builds the graph
    clients = {
        i: meter.client(i, partial(SecAggClient, config, index=i, random_bytes=random_bytes))
        for i in range(config.num_clients)
    }
    for i, client in clients.items():
        if sends(i, Stage.ADVERTISE_KEYS):
            advert = meter.client(i, client.advertise_keys)
            meter.upload(i, len(advert.to_bytes()))
            meter.server(partial(server.receive_advertisement, advert))
    broadcasts = meter.server(server.close_advertisement)
    store: dict[int, list[tuple[int, bytes]]] = {}
    for i, adverts in broadcasts.items():
        if not sends(i, Stage.SHARE_KEYS):
            continue
        shares = _attempt(meter, i, partial(clients[i].share_keys, adverts))
        if shares is None:
            continue
        meter.upload(i, len(shares.to_bytes()))
        meter.server(partial(server.receive_encrypted_shares, shares))
        for recipient, ciphertext in shares.ciphertexts:
            store.setdefault(recipient, []).append((i, ciphertext))
    shared = meter.server(server.close_share_keys)
    for i in sorted(shared):
        if not sends(i, Stage.MASKED_INPUT):
            continue
        inbox = [(s, ct) for s, ct in store.pop(i, []) if s in shared]
        masked = _attempt(
            meter,
            i,
            partial(
                clients[i].masked_input, inbox, updates[i], num_examples=num_examples[i], rng=rng
            ),
        )
        if masked is None:
            continue
        meter.upload(i, len(masked.to_bytes()))
        meter.server(partial(server.receive_masked_input, masked))
        del masked
    store.clear()
    request = meter.server(server.close_masked_input)
    for i in request.survivors:
        if not sends(i, Stage.UNMASKING):
            continue
        answer = _attempt(meter, i, partial(clients[i].unmask, request))
        if answer is None:
            continue
        meter.upload(i, len(answer.to_bytes()))
        meter.server(partial(server.receive_unmasking, answer))
    return meter.server(server.finish)
