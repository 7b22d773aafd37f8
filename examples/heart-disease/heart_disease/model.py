"""The model: logistic regression over the 16 features of :mod:`heart_disease.data`, written
as two logits (no disease, disease) so that cross-entropy and argmax accuracy apply as for any
classifier. FLamby's Fed-Heart-Disease benchmark uses the same model."""

from __future__ import annotations

import torch
from safetensors.torch import save
from torch import nn

from fedcommon import tensor_order
from heart_disease.data import N_FEATURES

N_CLASSES = 2


class HeartModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(N_FEATURES, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.linear(x)
        return logits


def initial_model(seed: int) -> HeartModel:
    """The model with PyTorch's default initialisation, drawn from ``seed``."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return HeartModel()
    finally:
        torch.random.set_rng_state(generator_state)


def initial_model_bytes(seed: int) -> bytes:
    """The initial model as the safetensors file a task starts from (POST
    /api/federated/models). Its metadata names the tensors' order (the ``state_dict`` order),
    which devices list their updates in; without it the platform would sort the names."""
    state = initial_model(seed).state_dict()
    return save(dict(state), metadata=tensor_order.metadata(list(state)))
