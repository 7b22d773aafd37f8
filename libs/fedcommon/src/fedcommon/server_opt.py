"""Server optimizers: apply a round's delta to the global model, with state that persists.

The coordinator's part of a strategy (issue 8): the aggregator publishes the round's delta Δ_t
(the mean of the devices' deltas, new minus old: Reddi et al.'s pseudo-gradient), and the
coordinator computes ``x_{t+1}`` from ``x_t``, Δ_t and the optimizer state, then stores the
new model version and the new state together. The state is plain float64 arrays plus a step
count, serialised with :mod:`fedcommon.arrays`, so a restarted coordinator reloads it and goes
on exactly as if it had never stopped. It lives in fedcommon because two services need it:
the coordinator runs it, and the aggregator's strategy catalog names it (services never import
each other). Its checks (``as_float64``, ``to_float32``) are the aggregation rules' own, kept
here so that fedcommon imports no service.

- FedAvgM: Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification": v ← μ·v + Δ;  x ← x + η·v.
- FedAdagrad, FedAdam, FedYogi: Reddi et al. 2021, "Adaptive Federated Optimization"
  (ICLR 2021), Algorithm 2:
  m ← β₁·m + (1 - β₁)·Δ;  v ← v + Δ² (Adagrad) | β₂·v + (1 - β₂)·Δ² (Adam) |
  v - (1 - β₂)·Δ²·sign(v - Δ²) (Yogi);  x ← x + η·m / (√v + τ).
  No bias correction, as in the paper; v starts at 0 (the paper asks v₋₁ >= τ², but τ in
  the denominator already keeps it away from zero; Flower starts at 0 too).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from fedcommon import arrays
from fedcommon.arrays import NDArrays
from fedcommon.constraints import MAX_SETTING
from fedcommon.errors import InvalidMessage

Shapes = Sequence[Sequence[int]]
Float64Arrays = list[npt.NDArray[np.float64]]

# The largest magnitude a value may have: models and deltas travel as float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_float64(values: NDArrays, shapes: Shapes, *, what: str) -> Float64Arrays:
    """Return ``values`` as new float64 arrays after checking shapes, dtype and range.

    Raises ``ValueError`` naming ``what`` if the shapes differ from ``shapes``, a dtype is not
    floating point, or a value is NaN, infinite or beyond the float32 range.
    """
    got, expected = [list(a.shape) for a in values], [list(s) for s in shapes]
    if got != expected:
        raise ValueError(f"{what}: shapes {got} differ from {expected}")
    result: Float64Arrays = []
    for array in values:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{what}: dtype {array.dtype} is not floating point")
        converted = np.array(array, dtype=np.float64)  # a copy: inputs are never mutated
        if converted.size and not np.isfinite(converted).all():
            raise ValueError(f"{what}: NaN or infinite values")
        if converted.size and float(np.abs(converted).max()) > FLOAT32_MAX:
            raise ValueError(f"{what}: values beyond the float32 range")
        result.append(converted)
    return result


def to_float32(values: Float64Arrays) -> NDArrays:
    """Return float32 copies; values are inside the float32 range by construction (clip guards
    against the last rounding step only)."""
    return [np.clip(a, -FLOAT32_MAX, FLOAT32_MAX).astype(np.float32) for a in values]


@dataclass(frozen=True)
class OptimizerState:
    """What a server optimizer carries from one round to the next: plain data only.

    ``slots`` maps a slot name ("momentum", "m", "v") to float64 arrays in model order.
    """

    optimizer: str
    step: int = 0
    slots: Mapping[str, Float64Arrays] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialise as ``fedcommon.arrays``: [name (u1), step (i8), then each slot's arrays,
        slots in sorted name order]; the optimizer that reads it back knows the slot names."""
        name = np.frombuffer(self.optimizer.encode("ascii"), dtype=np.uint8)
        header: NDArrays = [name, np.array([self.step], dtype=np.int64)]
        body: NDArrays = [a for slot in sorted(self.slots) for a in self.slots[slot]]
        return arrays.to_bytes(header + body)


@dataclass(frozen=True)
class Step:
    """A server step's outcome: the new model (float32) and the state to store beside it."""

    model: NDArrays
    state: OptimizerState


def _check_rate(name: str, param: str, value: float, *, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: {param} must be a number")
    if not low <= value < high or not np.isfinite(value):
        raise ValueError(f"{name}: {param} must be in [{low}, {high}), got {value}")


class ServerOptimizer(ABC):
    """x_{t+1} = x_t + direction(Δ_t, state). Pure: returns a new model and a new state."""

    name: ClassVar[str]
    slot_names: ClassVar[tuple[str, ...]]

    def initial_state(self, param_shapes: Shapes) -> OptimizerState:
        """The state before the first round: zeros in every slot, step 0."""
        slots = {
            slot: [np.zeros(shape, dtype=np.float64) for shape in param_shapes]
            for slot in self.slot_names
        }
        return OptimizerState(self.name, 0, slots)

    def step(self, model: NDArrays, delta: NDArrays, state: OptimizerState) -> Step:
        """Apply one round's ``delta`` to ``model``; inputs are not mutated.

        Raises ``ValueError`` if shapes disagree, anything is not finite, the state belongs to
        another optimizer, or the new model would leave the float32 range.
        """
        shapes = [list(a.shape) for a in model]
        x = as_float64(model, shapes, what=f"{self.name}: model")
        d = as_float64(delta, shapes, what=f"{self.name}: delta")
        self._check_state(state, shapes)
        with np.errstate(over="ignore", invalid="ignore"):
            direction, slots = self._direction(d, {k: state.slots[k] for k in self.slot_names})
            new = [xi + di for xi, di in zip(x, direction, strict=True)]
        overflow = any(not np.isfinite(a).all() for slot in slots.values() for a in slot) or any(
            not np.isfinite(a).all() or float(np.abs(a).max(initial=0.0)) > FLOAT32_MAX for a in new
        )
        if overflow:
            raise ValueError(f"{self.name}: the step overflows (lower the learning rate)")
        return Step(to_float32(new), OptimizerState(self.name, state.step + 1, slots))

    def load_state(self, data: bytes, param_shapes: Shapes) -> OptimizerState:
        """Parse :meth:`OptimizerState.to_bytes` output written by this optimizer."""
        try:
            parts = arrays.from_bytes(data)
        except InvalidMessage as exc:
            raise ValueError(f"{self.name}: optimizer state: {exc}") from exc
        expected = 2 + len(self.slot_names) * len(param_shapes)
        if len(parts) != expected or parts[0].dtype != np.uint8 or parts[1].shape != (1,):
            raise ValueError(f"{self.name}: optimizer state has the wrong layout")
        owner = parts[0].tobytes().decode("ascii", errors="replace")
        if owner != self.name:
            raise ValueError(f"{self.name}: optimizer state belongs to {owner!r}")
        step = int(parts[1][0])
        slots: dict[str, Float64Arrays] = {}
        rest = parts[2:]
        for index, slot in enumerate(sorted(self.slot_names)):
            chunk = rest[index * len(param_shapes) : (index + 1) * len(param_shapes)]
            slots[slot] = [np.asarray(a, dtype=np.float64) for a in chunk]
        state = OptimizerState(self.name, step, slots)
        self._check_state(state, [list(s) for s in param_shapes])
        return state

    def _check_state(self, state: OptimizerState, shapes: list[list[int]]) -> None:
        if state.optimizer != self.name:
            raise ValueError(f"{self.name}: optimizer state belongs to {state.optimizer!r}")
        if state.step < 0 or set(state.slots) != set(self.slot_names):
            raise ValueError(f"{self.name}: optimizer state has slots {sorted(state.slots)}")
        for slot in self.slot_names:
            values = state.slots[slot]
            if [list(a.shape) for a in values] != shapes:
                raise ValueError(f"{self.name}: optimizer state {slot!r} has the wrong shapes")
            if not all(np.isfinite(a).all() for a in values):
                raise ValueError(f"{self.name}: optimizer state {slot!r} is not finite")

    @abstractmethod
    def _direction(
        self, delta: Float64Arrays, slots: Mapping[str, Float64Arrays]
    ) -> tuple[Float64Arrays, dict[str, Float64Arrays]]:
        """Return what to add to the model and the new slots (new arrays only)."""


@dataclass(frozen=True)
class Momentum(ServerOptimizer):
    """FedAvgM: server SGD with momentum. ``momentum=0, lr=1`` is plain FedAvg (x + Δ)."""

    name: ClassVar[str] = "fedavgm"
    slot_names: ClassVar[tuple[str, ...]] = ("momentum",)
    lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _check_rate(self.name, "lr", self.lr, low=np.nextafter(0.0, 1.0), high=MAX_SETTING)
        _check_rate(self.name, "momentum", self.momentum, low=0.0, high=1.0)

    def _direction(
        self, delta: Float64Arrays, slots: Mapping[str, Float64Arrays]
    ) -> tuple[Float64Arrays, dict[str, Float64Arrays]]:
        velocity = [self.momentum * v + d for v, d in zip(slots["momentum"], delta, strict=True)]
        return [self.lr * v for v in velocity], {"momentum": velocity}


@dataclass(frozen=True)
class Adaptive(ServerOptimizer):
    """The shared shape of Reddi et al.'s Algorithm 2; subclasses give the v update."""

    slot_names: ClassVar[tuple[str, ...]] = ("m", "v")
    eta: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        tiny = float(np.nextafter(0.0, 1.0))
        _check_rate(self.name, "eta", self.eta, low=tiny, high=MAX_SETTING)
        _check_rate(self.name, "beta1", self.beta1, low=0.0, high=1.0)
        _check_rate(self.name, "beta2", self.beta2, low=0.0, high=1.0)
        # τ > 0 keeps m / (√v + τ) from ever being 0 / 0.
        _check_rate(self.name, "tau", self.tau, low=tiny, high=MAX_SETTING)

    @abstractmethod
    def _second_moment(self, v: Float64Arrays, delta: Float64Arrays) -> Float64Arrays:
        """The new v from the old one and Δ."""

    def _direction(
        self, delta: Float64Arrays, slots: Mapping[str, Float64Arrays]
    ) -> tuple[Float64Arrays, dict[str, Float64Arrays]]:
        m = [
            self.beta1 * m + (1.0 - self.beta1) * d for m, d in zip(slots["m"], delta, strict=True)
        ]
        v = self._second_moment(slots["v"], delta)
        step = [self.eta * mi / (np.sqrt(vi) + self.tau) for mi, vi in zip(m, v, strict=True)]
        return step, {"m": m, "v": v}


@dataclass(frozen=True)
class Adagrad(Adaptive):
    """FedAdagrad: v ← v + Δ²."""

    name: ClassVar[str] = "fedadagrad"
    eta: float = 0.1

    def _second_moment(self, v: Float64Arrays, delta: Float64Arrays) -> Float64Arrays:
        return [vi + d * d for vi, d in zip(v, delta, strict=True)]


@dataclass(frozen=True)
class Adam(Adaptive):
    """FedAdam: v ← β₂·v + (1 - β₂)·Δ²."""

    name: ClassVar[str] = "fedadam"

    def _second_moment(self, v: Float64Arrays, delta: Float64Arrays) -> Float64Arrays:
        return [
            self.beta2 * vi + (1.0 - self.beta2) * d * d for vi, d in zip(v, delta, strict=True)
        ]


@dataclass(frozen=True)
class Yogi(Adaptive):
    """FedYogi: v ← v - (1 - β₂)·Δ²·sign(v - Δ²); v never goes below zero (if v > Δ² it loses
    less than (1 - β₂)·v)."""

    name: ClassVar[str] = "fedyogi"

    def _second_moment(self, v: Float64Arrays, delta: Float64Arrays) -> Float64Arrays:
        return [
            vi - (1.0 - self.beta2) * d * d * np.sign(vi - d * d)
            for vi, d in zip(v, delta, strict=True)
        ]
