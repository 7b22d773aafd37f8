"""Central evaluation of a built-in model on its data set's held-out split, and applying a
round's delta to named tensors.

Only a task on a built-in model with its built-in data set is evaluated here: the services
never run a user's model, so a task on an uploaded one is judged by federated evaluation
(core/federated_evaluation.py) alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedcommon import datasets, models
from fedcommon.arrays import NDArrays
from fedcommon.messages.v1 import ModelArchitecture, TaskSpec

# Test images evaluated at once.
EVALUATION_CHUNK = 1000


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float


def new_model(
    architecture: ModelArchitecture, dataset: str, *, seed: int, hidden: int | None = None
) -> nn.Module:
    data = datasets.load_dataset(dataset)
    return models.build_model(
        architecture,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        seed=seed,
        hidden=hidden,
    )


def built_in(spec: TaskSpec, *, seed: int) -> nn.Module:
    """The task's built-in model, initialised from ``seed``.

    Raises
    ------
    ValueError
        The task has no built-in model (it names an uploaded one).
    """
    if spec.model_architecture is None or spec.dataset is None:
        raise ValueError(f"task {spec.task_name!r} has no built-in model")
    return new_model(spec.model_architecture, spec.dataset, seed=seed, hidden=spec.model_hidden)


def apply_delta(current: NDArrays, delta: NDArrays) -> NDArrays:
    """Return ``current + delta`` (update order), as float32.

    Raises
    ------
    ValueError
        The shapes differ.
    """
    if [a.shape for a in current] != [d.shape for d in delta]:
        raise ValueError("apply_delta: delta shapes do not match the model")
    return [
        (c + d.astype(np.float32)).astype(np.float32) for c, d in zip(current, delta, strict=True)
    ]


def evaluate_central(spec: TaskSpec, parameters: NDArrays) -> Evaluation | None:
    """Evaluate ``parameters`` (update order) as the task's built-in model on its data set's
    test split; None for a task with no central data."""
    if spec.model_architecture is None or spec.dataset is None:
        return None
    model = new_model(
        spec.model_architecture, spec.dataset, seed=spec.seed, hidden=spec.model_hidden
    )
    models.set_arrays(model, parameters)
    return evaluate(model, spec.dataset, standardize=spec.standardize)


def evaluate(model: nn.Module, dataset: str, *, standardize: bool = False) -> Evaluation:
    """Return accuracy and mean cross-entropy on the data set's held-out test split
    (standardised by the training split's statistics if the task asks)."""
    data = datasets.load_prepared(dataset, standardize=standardize)
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        # In chunks: the CNN's activations for Fashion-MNIST's 10,000 test images at once took
        # gigabytes at the coordinator's peak.
        for begin in range(0, len(data.y_test), EVALUATION_CHUNK):
            inputs = torch.from_numpy(data.x_test[begin : begin + EVALUATION_CHUNK])
            labels = torch.from_numpy(data.y_test[begin : begin + EVALUATION_CHUNK])
            logits = model(inputs)
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == labels).sum().item())
    count = len(data.y_test)
    return Evaluation(accuracy=correct / count, loss=loss_sum / count)
