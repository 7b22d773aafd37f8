"""``fedengine bench secagg``: a whole SecAgg+ round with real cryptography, in one process.

Every device and the server run fedprivacy's state machines through its in-process driver
(``fedprivacy.secagg.simulation``); a fraction ``dropout`` of the devices leave after sending
their masked input, so the server must rebuild their self masks from the survivors' shares
(Bonawitz et al. 2017: a device in the masked-input set stays in the sum). The result is
checked against the plain sum of the quantised inputs.

Figures: ``client_s_mean`` is a device's time over all its stages, averaged over every
device (those that leave ran three); ``server_s`` the server's
time over all its calls; ``plain_sum_s`` the time to add the quantised inputs without any
protocol (the baseline); ``bytes_up_per_client`` the canonical bytes a device that finishes
the round uploads in all stages (the Ed25519 signature the shell adds, 64 bytes a message,
is not counted); ``expansion`` that over ``dim * bits / 8``; ``server_peak_bytes`` the peak
of tracemalloc attributable to the server: the memory its calls keep, plus the largest
transient of any call (tracemalloc runs through the round, so every time is measured under
it). The ciphertexts the server routes are held by the shell's store, as in the aggregator.
"""

from __future__ import annotations

import hashlib
import statistics
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from fedprivacy.secagg.config import RoundConfig
from fedprivacy.secagg.encoding import encode_update
from fedprivacy.secagg.messages import Stage
from fedprivacy.secagg.simulation import Meter, run_round

T = TypeVar("T")

SECAGG_KEYS = (
    "clients",
    "dim",
    "bits",
    "dropout",
    "neighbors",
    "threshold",
    "exact",
    "client_s_mean",
    "server_s",
    "plain_sum_s",
    "bytes_up_per_client",
    "expansion",
    "server_peak_bytes",
)


class _BenchMeter(Meter):
    """Times every call, counts uploads, and attributes tracemalloc figures to the server."""

    def __init__(self) -> None:
        self.client_s: defaultdict[int, float] = defaultdict(float)
        self.uploaded: defaultdict[int, int] = defaultdict(int)
        self.server_s = 0.0
        self.server_retained = 0
        self.server_peak = 0

    def client(self, index: int, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.client_s[index] += time.perf_counter() - start

    def server(self, call: Callable[[], T]) -> T:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.server_s += time.perf_counter() - start
            after, peak = tracemalloc.get_traced_memory()
            self.server_peak = max(self.server_peak, self.server_retained + peak - before)
            self.server_retained += after - before

    def upload(self, index: int, size: int) -> None:
        self.uploaded[index] += size


def bench_secagg(
    *, clients: int, dim: int, dropout: float, bits: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Run one round and return the figures of the module docstring (``SECAGG_KEYS``).

    Raises
    ------
    ValueError
        ``dropout`` outside [0, 1), or a configuration the protocol refuses.
    """
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    digest = hashlib.sha256(f"fedengine bench secagg {seed}".encode()).digest()
    config = RoundConfig.create(
        task_id=digest[:16],
        round_number=1,
        num_clients=clients,
        dim=dim,
        bits=bits,
        clip_norm=1.0,
        weight_cap=1,
        graph_seed=digest,
    )
    data_rng = np.random.default_rng(seed)
    updates = [
        (data_rng.normal(size=dim) / np.sqrt(dim)).astype(np.float32) for _ in range(clients)
    ]
    leaving = data_rng.choice(clients, size=round(dropout * clients), replace=False)
    drops = {int(device): Stage.UNMASKING for device in leaving}

    meter = _BenchMeter()
    tracemalloc.start()
    try:
        result = run_round(
            config,
            updates,
            num_examples=[1] * clients,
            rng=np.random.default_rng(seed + 1),
            drop_before=drops,
            meter=meter,
        )
    finally:
        tracemalloc.stop()

    replay = np.random.default_rng(seed + 1)
    plain = np.zeros(config.vector_length, dtype=np.uint64)
    plain_sum_s = 0.0
    for device in result.contributors:  # the same order, so the same stochastic rounding
        encoded = encode_update(
            updates[device],
            num_examples=1,
            clip_norm=config.clip_norm,
            weight_cap=config.weight_cap,
            bits=bits,
            clip_bit=False,
            rng=replay,
        )
        start = time.perf_counter()
        plain += encoded
        plain_sum_s += time.perf_counter() - start
    exact = result.contributors == tuple(range(clients)) and bool(
        np.array_equal(result.total, plain & np.uint64((1 << config.modulus_bits) - 1))
    )
    finishers = [d for d in range(clients) if d not in drops]
    bytes_up = statistics.fmean(meter.uploaded[d] for d in finishers) if finishers else 0.0
    return {
        "clients": clients,
        "dim": dim,
        "bits": bits,
        "dropout": dropout,
        "neighbors": config.degree,
        "threshold": config.threshold,
        "exact": exact,
        "client_s_mean": statistics.fmean(meter.client_s.values()),
        "server_s": meter.server_s,
        "plain_sum_s": plain_sum_s,
        "bytes_up_per_client": bytes_up,
        "expansion": bytes_up / (dim * bits / 8),
        "server_peak_bytes": meter.server_peak,
    }
