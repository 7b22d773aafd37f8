"""Malicious devices for testing robust aggregation: who attacks, and what they send.

A fleet can make a fraction of its devices Byzantine. Each attacker trains like an honest device
and then sends, in place of its honest delta Δ (the ``scale`` s is the operator's
``--attack-scale``):

- ``sign_flip``: -s·Δ, the sign-flipping attack (as in Li et al. 2019, "RSA: Byzantine-Robust
  Stochastic Aggregation Methods"); once s·attackers outweighs the honest devices it turns a
  plain average against the honest direction;
- ``gaussian``: an update drawn from N(0, s²) per coordinate, unrelated to its data (the
  "Gaussian attack" of Fang et al. 2020, "Local Model Poisoning Attacks to Byzantine-Robust
  Federated Learning");
- ``label_flip``: s·Δ where Δ was trained on labels mapped y -> C-1-y (Fang et al. 2020; Tolpegin
  et al. 2020, "Data Poisoning Attacks Against Federated Learning Systems").

Pure numpy, no I/O: the simulator's shell picks the attackers once from the fleet's seed and
applies these functions around ``train_local``. Nothing here tells the aggregator who attacks;
its validation (the norm bound among others) judges an attacker's update like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from fedcommon.arrays import NDArrays

# Keeps the attackers' draw apart from the other uses of the fleet seed (data partitions).
_ATTACKERS_STREAM = 0x0A77AC4E
_UPDATES_STREAM = 0x0A77AC4F


class AttackKind(StrEnum):
    SIGN_FLIP = "sign_flip"
    GAUSSIAN = "gaussian"
    LABEL_FLIP = "label_flip"


@dataclass(frozen=True)
class Attack:
    """What an attacker does; ``scale`` multiplies the attack's strength (see the module doc)."""

    kind: AttackKind
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, AttackKind):
            raise TypeError(f"Attack: kind must be an AttackKind, got {self.kind!r}")
        if isinstance(self.scale, bool) or not (
            isinstance(self.scale, int | float) and 0.0 < self.scale < math.inf
        ):
            raise ValueError(f"Attack: scale must be a finite number > 0, got {self.scale!r}")


def attacker_count(devices: int, fraction: float) -> int:
    """floor(fraction·devices): the fraction asked for is never exceeded.

    The tolerance absorbs float error (0.29·100 is 28.999...96 in binary), so a fraction meant
    as a whole number of devices gives that number.
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 0:
        raise ValueError(f"attacker_count: devices must be an int >= 0, got {devices!r}")
    if isinstance(fraction, bool) or not (
        isinstance(fraction, int | float) and 0.0 <= fraction <= 1.0
    ):
        raise ValueError(f"attacker_count: fraction must be in [0, 1], got {fraction!r}")
    return min(devices, math.floor(fraction * devices + 1e-9))


def choose_attackers(devices: int, fraction: float, rng: np.random.Generator) -> frozenset[int]:
    """The indices of the malicious devices: ``attacker_count`` of them, uniformly at random."""
    count = attacker_count(devices, fraction)
    if count == 0:
        return frozenset()
    return frozenset(int(i) for i in rng.choice(devices, size=count, replace=False))


def attackers_rng(fleet_seed: int) -> np.random.Generator:
    """The generator ``choose_attackers`` takes: the same fleet seed, the same attackers."""
    return np.random.default_rng([_ATTACKERS_STREAM, fleet_seed])


def update_rng(
    *, fleet_seed: int, task_seed: int, round_number: int, device_index: int
) -> np.random.Generator:
    """The generator for one attacker's update in one round (the Gaussian attack's draw): a
    retrained request draws the same update again."""
    return np.random.default_rng(
        [_UPDATES_STREAM, fleet_seed, task_seed, round_number, device_index]
    )


def flip_labels(
    labels: npt.NDArray[np.int64], num_classes: int, attack: Attack
) -> npt.NDArray[np.int64]:
    """The labels the attacker trains on: y -> C-1-y for ``label_flip``, else ``labels``.

    Raises ``ValueError`` if a label lies outside [0, num_classes).
    """
    if attack.kind is not AttackKind.LABEL_FLIP:
        return labels
    if num_classes < 2:
        raise ValueError(f"flip_labels: num_classes must be >= 2, got {num_classes}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"flip_labels: labels must lie in [0, {num_classes})")
    return (num_classes - 1 - labels).astype(np.int64)


def poison(delta: NDArrays, attack: Attack, rng: np.random.Generator) -> NDArrays:
    """The update an attacker sends instead of ``delta`` (its trained delta); float32 arrays of
    ``delta``'s shapes. ``delta`` itself is left unchanged."""
    if attack.kind is AttackKind.SIGN_FLIP:
        return [np.multiply(d, -attack.scale, dtype=np.float32) for d in delta]
    if attack.kind is AttackKind.GAUSSIAN:
        return [
            rng.normal(0.0, attack.scale, size=d.shape).astype(np.float32, copy=False)
            for d in delta
        ]
    return [np.multiply(d, attack.scale, dtype=np.float32) for d in delta]
