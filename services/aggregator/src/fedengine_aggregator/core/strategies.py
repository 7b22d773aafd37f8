"""Aggregation strategies behind one small interface (issue 8), pure: no I/O, no clock, no RNG.

A round's updates go into an :class:`Accumulator` one at a time (``add``) and come out as the
round's delta (``result``): the same sign as a device's delta (new weights minus old), what
Reddi et al. 2021 call the pseudo-gradient Δ_t. An :class:`AggregationRule` is the per-task
configuration that starts one accumulator per round.

Sum-based rules (FedAvg, and with it FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad) keep a
running weighted sum, so a round's memory does not depend on how many devices take part.
Robust rules (median, trimmed mean, Krum) must see every update at once and buffer them: their
``buffers`` flag says so.

Whatever a server optimizer does with the delta is the coordinator's business
(:mod:`fedcommon.server_opt`): the aggregator only publishes the delta.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedcommon.arrays import NDArrays

# Shared with the coordinator's server optimizers: one check of what an update may hold.
from fedcommon.server_opt import Float64Arrays, Shapes, as_float64, to_float32


def check_examples(num_examples: int) -> int:
    """Return ``num_examples`` if it is a positive int, else raise ``ValueError``."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
        raise ValueError(f"num_examples must be an int, got {type(num_examples).__name__}")
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    return int(num_examples)


@dataclass(frozen=True)
class Prepared:
    """An update checked and converted by :meth:`Accumulator.prepare`, ready to fold in."""

    arrays: Float64Arrays
    num_examples: int


class Accumulator(ABC):
    """One round's aggregation: updates go in one at a time, the round's delta comes out.

    Every update is checked the same way (shapes, floating dtype, finite and inside the float32
    range, a positive example count) before the rule sees it; a refused update changes nothing.
    Results are float32, accumulated in float64, and deterministic given the updates in order.
    """

    buffers: ClassVar[bool]

    def __init__(self, param_shapes: Shapes, *, min_updates: int = 1) -> None:
        self.param_shapes = [list(shape) for shape in param_shapes]
        self.min_updates = min_updates
        self._count = 0

    @property
    def count(self) -> int:
        """How many updates were added."""
        return self._count

    def add(self, update: NDArrays, num_examples: int) -> None:
        """Take one device's update (its delta) and the example count it claims."""
        self.fold(self.prepare(update, num_examples))

    def prepare(self, update: NDArrays, num_examples: int) -> Prepared:
        """Check ``update`` and convert it, changing nothing here: ``fold`` cannot fail on it.

        A caller that must record an update as accepted before it counts (the aggregator
        writes its verdict first) prepares, records, then folds.
        """
        examples = check_examples(num_examples)
        return Prepared(as_float64(update, self.param_shapes, what="update"), examples)

    def fold(self, prepared: Prepared) -> None:
        """Count an update ``prepare`` returned (each one once)."""
        self._add(prepared.arrays, prepared.num_examples)
        self._count += 1

    def result(self) -> NDArrays:
        """Return the round's delta (float32, model shapes); the accumulator can go on."""
        if self._count < self.min_updates:
            raise ValueError(
                f"{type(self).__name__}: needs at least {self.min_updates} updates, "
                f"got {self._count}"
            )
        return to_float32(self._result())

    @abstractmethod
    def _add(self, update: Float64Arrays, num_examples: int) -> None:
        """Fold in one checked update (float64 arrays this accumulator may keep)."""

    @abstractmethod
    def _result(self) -> Float64Arrays:
        """The aggregate of the updates so far (at least ``min_updates`` of them)."""


class AggregationRule(ABC):
    """A task's aggregation rule: validated parameters, and one accumulator per round."""

    name: ClassVar[str]
    buffers: ClassVar[bool]

    @property
    def min_updates(self) -> int:
        """The fewest updates a round needs (a task's min_devices below it cannot work)."""
        return 1

    @abstractmethod
    def start(self, param_shapes: Shapes) -> Accumulator:
        """Return an empty accumulator for a round of a model with ``param_shapes``."""
