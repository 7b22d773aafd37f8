"""The interface user code implements: ``fit`` and ``evaluate`` over named tensors.

In the spirit of Flower's NumPyClient, but over a mapping from tensor name to array rather than
a list, so that a client never has to know the order in which the platform lists tensors on
the wire (the runtime puts them in that order, fedcommon.tensor_order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

Parameters = Mapping[str, npt.NDArray[np.generic]]
Scalar = bool | int | float | str
Config = Mapping[str, Scalar]
Metrics = Mapping[str, float]


@dataclass(frozen=True)
class FitResult:
    """What local training returns: the new parameters (every tensor of the model, by name),
    the number of examples trained on (the update's weight in the average), and metrics
    (``train_loss`` and ``train_accuracy`` are reported with the update when present)."""

    parameters: Parameters
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateResult:
    """What evaluating the global model on the device's own held-out data returns: the mean
    loss, the number of examples scored (each device's weight in the fleet's mean), and at
    most 16 metrics named by ``[A-Za-z0-9_.-]{1,64}`` (``accuracy``, a share in [0, 1], is
    the one a task's stopping rules read). Every number must be finite and within ±1e9; a
    result that is not is logged on the device and not sent."""

    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


class Client(Protocol):
    """What a device runs. Both methods are called in a worker thread, one call at a time.

    ``fit``'s ``config`` carries the task's settings for this round: ``learning_rate``,
    ``local_epochs``, ``batch_size``, ``seed`` (this device's seed for the round),
    ``proximal_mu``, ``round_number``, ``model_version``, ``task_id``, ``dataset`` and
    ``model_architecture`` (the task's names, where it has built-in ones; a client may ignore
    them); for a device whose privacy level asks for local DP, ``local_dp.noise_multiplier``,
    ``local_dp.sample_rate``, ``local_dp.steps`` and ``local_dp.max_grad_norm``, which only a
    client with ``supports_local_dp = True`` is given (feddevice.array_client runs DP-SGD at
    exactly those settings).

    ``evaluate``'s ``config`` carries ``task_id``, ``round_number``, ``model_version``,
    ``batch_size``, ``seed``, and ``dataset`` and ``model_architecture`` where the task has
    built-in ones (a task on an uploaded model has neither). A client without held-out data
    raises ``ValueError``: the device then sends no evaluation.
    """

    def fit(self, parameters: Parameters, config: Config) -> FitResult: ...

    def evaluate(self, parameters: Parameters, config: Config) -> EvaluateResult: ...
