"""FedAvg: the example-weighted mean of client updates.

Paper: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", https://arxiv.org/abs/1602.05629 (Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcommon.arrays import NDArrays


@dataclass(frozen=True)
class WeightedUpdate:
    num_examples: int
    arrays: NDArrays


def aggregate(updates: Sequence[WeightedUpdate]) -> NDArrays:
    """Return the example-weighted mean of ``updates`` (float32, accumulated in float64).

    Raises
    ------
    ValueError
        If ``updates`` is empty, weights are not positive or the shapes disagree.
    """
    if not updates:
        raise ValueError("aggregate: updates must not be empty")
    total = sum(update.num_examples for update in updates)
    if any(update.num_examples <= 0 for update in updates):
        raise ValueError("aggregate: num_examples must be positive")
    reference = [array.shape for array in updates[0].arrays]
    sums = [np.zeros(shape, dtype=np.float64) for shape in reference]
    for update in updates:
        if [array.shape for array in update.arrays] != reference:
            raise ValueError("aggregate: updates have different shapes")
        for acc, array in zip(sums, update.arrays, strict=True):
            acc += np.asarray(array, dtype=np.float64) * update.num_examples
    return [(acc / total).astype(np.float32) for acc in sums]
