"""Shared builders for the SecAgg+ tests: a small round config and its expected sum."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from fedprivacy.secagg.config import RoundConfig
from fedprivacy.secagg.encoding import encode_update
from fedprivacy.secagg.masking import MaskedVector

TASK = bytes.fromhex("00112233445566778899aabbccddeeff")


def make_config(
    num_clients: int, dim: int, *, bits: int = 16, clip_bit: bool = False, round_number: int = 7
) -> RoundConfig:
    return RoundConfig.create(
        task_id=TASK,
        round_number=round_number,
        num_clients=num_clients,
        dim=dim,
        bits=bits,
        clip_norm=1.0,
        weight_cap=20,
        graph_seed=bytes(range(32)),
        clip_bit=clip_bit,
    )


def make_updates(config: RoundConfig, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    updates = [
        (rng.normal(size=config.dim) * rng.uniform(0.1, 2.0) / np.sqrt(config.dim)).astype(
            np.float32
        )
        for _ in range(config.num_clients)
    ]
    return updates, [int(x) for x in rng.integers(0, 40, config.num_clients)]


def expected_sum(
    config: RoundConfig,
    updates: Sequence[np.ndarray],
    num_examples: Sequence[int],
    contributors: Iterable[int],
    *,
    rng_seed: int,
) -> MaskedVector:
    """The plain modular sum of what the contributors encoded (same rng, same order)."""
    rng = np.random.default_rng(rng_seed)
    total = np.zeros(config.vector_length, dtype=np.uint64)
    for i in sorted(contributors):
        total += encode_update(
            updates[i],
            num_examples=num_examples[i],
            clip_norm=config.clip_norm,
            weight_cap=config.weight_cap,
            bits=config.bits,
            clip_bit=config.clip_bit,
            rng=rng,
        )
    return total & np.uint64((1 << config.modulus_bits) - 1)
