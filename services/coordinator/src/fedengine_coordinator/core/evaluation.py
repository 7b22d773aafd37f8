"""Central evaluation of a global model on the held-out split, and applying a round's delta."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import nn

from fedcommon import datasets, models
from fedcommon.arrays import NDArrays
from fedcommon.messages.v1 import ModelArchitecture


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float


def new_model(architecture: ModelArchitecture, dataset: str, *, seed: int) -> nn.Module:
    data = datasets.load_dataset(dataset)
    return models.build_model(
        architecture, input_shape=data.input_shape, num_classes=data.num_classes, seed=seed
    )


@cache
def param_shapes(architecture: ModelArchitecture, dataset: str) -> list[list[int]]:
    """Return the parameter shapes (state_dict order) every version of such a model has."""
    return [list(a.shape) for a in models.get_arrays(new_model(architecture, dataset, seed=0))]


def apply_delta(model: nn.Module, delta: NDArrays) -> nn.Module:
    """Add ``delta`` (state_dict order) to ``model``'s weights and return it."""
    current = models.get_arrays(model)
    if [a.shape for a in current] != [d.shape for d in delta]:
        raise ValueError("apply_delta: delta shapes do not match the model")
    models.set_arrays(
        model, [c + d.astype(np.float32) for c, d in zip(current, delta, strict=True)]
    )
    return model


def evaluate(model: nn.Module, dataset: str) -> Evaluation:
    """Return accuracy and mean cross-entropy on the data set's held-out test split."""
    data = datasets.load_dataset(dataset)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x_test))
        labels = torch.from_numpy(data.y_test)
        loss = nn.functional.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return Evaluation(accuracy=float(accuracy), loss=float(loss))
