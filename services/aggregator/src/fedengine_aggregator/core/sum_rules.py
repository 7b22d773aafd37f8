"""FedAvg as a running weighted sum: memory independent of the number of participants.

Paper: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (Algorithm 1): the example-weighted mean of client deltas. FedProx's
server side (Li et al. 2020) and the server optimizers of FedAvgM (Hsu et al. 2019) and
FedAdam / FedYogi / FedAdagrad (Reddi et al. 2021) all start from this same mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedcommon.constraints import MAX_EXAMPLES_PER_UPDATE
from fedcommon.server_opt import Float64Arrays, Shapes
from fedengine_aggregator.core.strategies import Accumulator, AggregationRule


class WeightedSum(Accumulator):
    """Σ wᵢ·Δᵢ and Σ wᵢ in float64, with wᵢ = min(num_examplesᵢ, max_examples).

    Holds one float64 array per parameter tensor whatever the number of updates: it does not
    buffer. Clamping bounds any one device's share of the mean to
    ``max_examples / (max_examples + Σ other weights)``, whatever count it claims.
    """

    buffers = False

    def __init__(self, param_shapes: Shapes, *, max_examples: int) -> None:
        super().__init__(param_shapes)
        self.max_examples = max_examples
        self._sums = [np.zeros(shape, dtype=np.float64) for shape in self.param_shapes]
        self._total = 0

    @property
    def total_weight(self) -> int:
        """Σ of the clamped example counts added so far."""
        return self._total

    def weight_of(self, num_examples: int) -> int:
        """The weight an update claiming ``num_examples`` gets."""
        return min(num_examples, self.max_examples)

    def _add(self, update: Float64Arrays, num_examples: int) -> None:
        weight = self.weight_of(num_examples)
        for acc, array in zip(self._sums, update, strict=True):
            array *= weight  # our own float64 copy: scaling it in place is allowed
            acc += array
        self._total += weight

    def _result(self) -> Float64Arrays:
        # |Σ wᵢΔᵢ| <= n·max_examples·float32 max, far inside float64: no overflow here, and
        # the quotient lies within the range of the inputs.
        return [acc / self._total for acc in self._sums]


@dataclass(frozen=True)
class FedAvg(AggregationRule):
    """The example-weighted mean of the round's deltas (a running sum, no buffering).

    ``max_examples`` is the task's cap on the example count one device may claim (at most the
    hard cap the gateway and validation enforce, ``MAX_EXAMPLES_PER_UPDATE``): a claim above it
    counts as ``max_examples``.
    """

    name: ClassVar[str] = "fedavg"
    buffers: ClassVar[bool] = False
    max_examples: int = MAX_EXAMPLES_PER_UPDATE

    def __post_init__(self) -> None:
        if isinstance(self.max_examples, bool) or not isinstance(self.max_examples, int):
            raise ValueError("fedavg: max_examples must be an int")
        if not 1 <= self.max_examples <= MAX_EXAMPLES_PER_UPDATE:
            raise ValueError(
                f"fedavg: max_examples must be in [1, {MAX_EXAMPLES_PER_UPDATE}], "
                f"got {self.max_examples}"
            )

    def start(self, param_shapes: Shapes) -> WeightedSum:
        return WeightedSum(param_shapes, max_examples=self.max_examples)
