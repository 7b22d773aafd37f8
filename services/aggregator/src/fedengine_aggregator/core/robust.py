"""Byzantine-robust aggregation rules. They BUFFER every update of a round, by necessity.

A median, a trimmed mean or a Krum score depends on all updates at once, so unlike FedAvg's
running sum these hold n float32 copies of the model until the round closes (memory grows
linearly with the participants; Krum's distance matrix adds n² floats). Example counts are
ignored: a robust rule that weighted by claimed counts would hand attackers a lever.

- Coordinate-wise median and trimmed mean: Yin et al. 2018, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates" (https://arxiv.org/abs/1803.01498).
- Krum and Multi-Krum: Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent" (NeurIPS 2017), Sections 4 and 5.

All statistics are taken in float64 (the mean of two float32 values near the float32 maximum
would overflow in float32). Ties are broken by the order updates were added, so results are
deterministic given the updates in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from fedcommon.arrays import NDArrays
from fedcommon.server_opt import Float64Arrays, Shapes
from fedengine_aggregator.core.strategies import Accumulator, AggregationRule


class Buffer(Accumulator):
    """Keeps every update (as float32: the values are inside its range) until ``result``."""

    buffers = True

    def __init__(self, param_shapes: Shapes, *, min_updates: int = 1) -> None:
        super().__init__(param_shapes, min_updates=min_updates)
        self._updates: list[list[npt.NDArray[np.float32]]] = []

    def _add(self, update: Float64Arrays, num_examples: int) -> None:
        self._updates.append([a.astype(np.float32) for a in update])

    def stacked(self, layer: int) -> npt.NDArray[np.float64]:
        """The ``layer``-th tensor of every update, stacked on a new first axis, in float64."""
        return np.stack([u[layer] for u in self._updates]).astype(np.float64)


class MedianBuffer(Buffer):
    def _result(self) -> Float64Arrays:
        return [np.median(self.stacked(i), axis=0) for i in range(len(self.param_shapes))]


@dataclass(frozen=True)
class Median(AggregationRule):
    """The coordinate-wise median of the round's deltas (buffers every update).

    Each coordinate lies within the range of the honest values as long as fewer than half the
    updates are Byzantine, whatever their magnitude.
    """

    name: ClassVar[str] = "median"
    buffers: ClassVar[bool] = True

    def start(self, param_shapes: Shapes) -> MedianBuffer:
        return MedianBuffer(param_shapes)


class TrimmedMeanBuffer(Buffer):
    def __init__(self, param_shapes: Shapes, *, beta: float) -> None:
        super().__init__(param_shapes)
        self.beta = beta

    def trimmed(self) -> int:
        """How many values are dropped from each side of each coordinate: ⌊β·n⌋."""
        return math.floor(self.beta * self.count)

    def _result(self) -> Float64Arrays:
        k = self.trimmed()  # β < 0.5 keeps n - 2k >= 1
        result = []
        for i in range(len(self.param_shapes)):
            ordered = np.sort(self.stacked(i), axis=0)
            result.append(ordered[k : self.count - k].mean(axis=0))
        return result


@dataclass(frozen=True)
class TrimmedMean(AggregationRule):
    """The coordinate-wise β-trimmed mean (buffers every update).

    For each coordinate the ⌊β·n⌋ smallest and ⌊β·n⌋ largest values are dropped and the rest
    averaged. With at most ⌊β·n⌋ Byzantine updates, each coordinate lies within the range of the
    honest values. β in [0, 0.5); β = 0 is the plain (unweighted) mean.
    """

    name: ClassVar[str] = "trimmed_mean"
    buffers: ClassVar[bool] = True
    beta: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.beta, bool) or not isinstance(self.beta, int | float):
            raise ValueError("trimmed_mean: beta must be a number")
        if not 0.0 <= self.beta < 0.5:
            raise ValueError(f"trimmed_mean: beta must be in [0, 0.5), got {self.beta}")

    def start(self, param_shapes: Shapes) -> TrimmedMeanBuffer:
        return TrimmedMeanBuffer(param_shapes, beta=float(self.beta))


def squared_distances(buffer: Buffer) -> npt.NDArray[np.float64]:
    """The n×n matrix of squared L2 distances between the buffered updates (float64).

    Computed as Σ (xᵢ - xⱼ)² layer by layer, not as |x|² + |y|² - 2xy, which cancels
    catastrophically when updates are close; memory stays O(n · largest layer).
    """
    n = buffer.count
    distances = np.zeros((n, n), dtype=np.float64)
    for layer in range(len(buffer.param_shapes)):
        flat = buffer.stacked(layer).reshape(n, -1)
        for i in range(n):
            diff = flat - flat[i]
            distances[i] += np.einsum("ij,ij->i", diff, diff)
    return distances


def krum_scores(distances: npt.NDArray[np.float64], f: int) -> npt.NDArray[np.float64]:
    """Each update's Krum score: the sum of its squared distances to its n - f - 2 nearest
    other updates (Blanchard et al. 2017, Section 4). Lower is better."""
    n = len(distances)
    neighbours = n - f - 2
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(distances[i], i)
        scores[i] = np.sort(others)[:neighbours].sum()
    return scores


class KrumBuffer(Buffer):
    def __init__(self, param_shapes: Shapes, *, f: int, m: int | None) -> None:
        super().__init__(param_shapes, min_updates=2 * f + 3)
        self.f = f
        self.m = m

    def _check_enough(self) -> None:
        if self.count < self.min_updates:
            raise ValueError(
                f"krum: needs n > 2f + 2 = {2 * self.f + 2} updates (f = {self.f}), "
                f"got {self.count}"
            )

    def result(self) -> NDArrays:
        self._check_enough()
        return super().result()

    def selected(self) -> list[int]:
        """Indices (in the order added) of the updates Krum / Multi-Krum keeps."""
        self._check_enough()
        m = self.count - self.f if self.m is None else self.m
        if m > self.count - self.f:
            raise ValueError(
                f"multi_krum: m = {m} exceeds n - f = {self.count - self.f} (n = {self.count})"
            )
        scores = krum_scores(squared_distances(self), self.f)
        # A stable sort: equal scores keep the order the updates were added.
        return [int(i) for i in np.argsort(scores, kind="stable")[:m]]

    def _result(self) -> Float64Arrays:
        chosen = self.selected()
        # Multi-Krum's output is the plain mean of the m chosen updates (Section 5); m = 1 is
        # Krum, which returns the chosen update itself.
        return [
            np.mean([self._updates[i][layer].astype(np.float64) for i in chosen], axis=0)
            for layer in range(len(self.param_shapes))
        ]


def _check_f(name: str, f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int):
        raise ValueError(f"{name}: f must be an int")
    if f < 0:
        raise ValueError(f"{name}: f must be >= 0, got {f}")


@dataclass(frozen=True)
class Krum(AggregationRule):
    """Krum: the one update whose n - f - 2 nearest neighbours are closest (buffers every
    update). Tolerates f Byzantine updates among n when n > 2f + 2."""

    name: ClassVar[str] = "krum"
    buffers: ClassVar[bool] = True
    f: int = 2

    def __post_init__(self) -> None:
        _check_f(self.name, self.f)

    @property
    def min_updates(self) -> int:
        return 2 * self.f + 3

    def start(self, param_shapes: Shapes) -> KrumBuffer:
        return KrumBuffer(param_shapes, f=self.f, m=1)


@dataclass(frozen=True)
class MultiKrum(AggregationRule):
    """Multi-Krum: the mean of the m updates with the best Krum scores (buffers every update).

    ``m`` defaults to n - f (every update that could be honest); it must be at most n - f in
    the round, checked when the round closes (n is known then). Needs n > 2f + 2.
    """

    name: ClassVar[str] = "multi_krum"
    buffers: ClassVar[bool] = True
    f: int = 2
    m: int | None = None

    def __post_init__(self) -> None:
        _check_f(self.name, self.f)
        if self.m is not None:
            if isinstance(self.m, bool) or not isinstance(self.m, int):
                raise ValueError("multi_krum: m must be an int")
            if self.m < 1:
                raise ValueError(f"multi_krum: m must be >= 1, got {self.m}")

    @property
    def min_updates(self) -> int:
        # Enough for Krum's guarantee and for m: n - f >= m.
        return max(2 * self.f + 3, (self.m or 1) + self.f)

    def start(self, param_shapes: Shapes) -> KrumBuffer:
        return KrumBuffer(param_shapes, f=self.f, m=self.m)
