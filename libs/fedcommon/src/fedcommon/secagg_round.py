"""One SecAgg+ round's public parameters as the protocol library takes them.

The aggregator and every device build ``fedprivacy.secagg.RoundConfig`` from the same
round.opened / train.requested fields; this is the one mapping, so that both sides derive the
same graph, modulus and vector length. (fedcommon does not import fedprivacy: the caller
passes the result to ``RoundConfig(**fields)``.)
"""

from __future__ import annotations

import math
from uuid import UUID

from fedcommon.messages.v1 import RoundSecAgg


def dim_of(param_shapes: list[list[int]]) -> int:
    """The number of coordinates of an update of these shapes (one flat masked vector)."""
    return sum(math.prod(shape) for shape in param_shapes)


def config_fields(
    secagg: RoundSecAgg, *, task_id: UUID, round_number: int, num_clients: int, dim: int
) -> dict[str, object]:
    """The keyword arguments of ``fedprivacy.secagg.RoundConfig`` for this round."""
    return {
        "task_id": task_id.bytes,
        "round_number": round_number,
        "num_clients": num_clients,
        "dim": dim,
        "bits": secagg.bits,
        "clip_norm": secagg.clip_norm,
        "weight_cap": secagg.weight_cap,
        "graph_seed": secagg.graph_seed,
        "degree": secagg.degree,
        "threshold": secagg.threshold,
        "clip_bit": secagg.clip_bit,
    }


def round_degree(num_clients: int, *, neighbours: int | None, default: int) -> int:
    """The graph degree of a round of ``num_clients``: the task's ``neighbours`` (or the
    library's ``default`` for this size), at most n - 1 (the complete graph)."""
    wanted = default if neighbours is None else neighbours
    return max(1, min(wanted, num_clients - 1))


def round_threshold(degree: int, *, threshold: int | None) -> int:
    """The task's threshold, raised to a majority of ``degree`` or lowered to ``degree``."""
    majority = degree // 2 + 1
    return majority if threshold is None else min(max(threshold, majority), degree)
