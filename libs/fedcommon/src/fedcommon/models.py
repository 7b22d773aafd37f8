"""The PyTorch models tasks train (needs the ``torch`` extra), and their byte forms.

Global model versions are stored and served as safetensors; updates travel as the list of
parameter deltas in ``state_dict`` order through :mod:`fedcommon.arrays`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from fedcommon import tensor_order
from fedcommon.arrays import NDArrays
from fedcommon.messages.v1 import ModelArchitecture


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        features = int(np.prod(input_shape))
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.net(x)
        return result


class SmallCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * (height // 2) * (width // 2), 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.head(self.features(x))
        return result


# The MLP's hidden units when a task names none.
DEFAULT_HIDDEN = 64


def build_model(
    architecture: ModelArchitecture,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    hidden: int | None = None,
) -> nn.Module:
    """Return a freshly initialised model; the seed makes version 0 reproducible.

    Parameters
    ----------
    hidden
        The MLP's hidden units (None: DEFAULT_HIDDEN). The CNN's layers are fixed.

    Raises
    ------
    ValueError
        An unknown architecture, ``hidden`` below 1, or ``hidden`` given for the CNN.
    """
    if hidden is not None:
        if architecture != ModelArchitecture.MLP:
            raise ValueError(f"models: hidden applies to the MLP only, not {architecture}")
        if hidden < 1:
            raise ValueError(f"models: hidden must be >= 1, not {hidden}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if architecture == ModelArchitecture.MLP:
            return MLP(input_shape, num_classes, DEFAULT_HIDDEN if hidden is None else hidden)
        if architecture == ModelArchitecture.CNN:
            return SmallCNN(input_shape, num_classes)
    finally:
        torch.random.set_rng_state(generator_state)
    raise ValueError(f"models: unknown architecture {architecture!r}")


def get_arrays(model: nn.Module) -> NDArrays:
    """Return the model's state as float32 arrays in ``state_dict`` order."""
    return [
        t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()
    ]


def set_arrays(model: nn.Module, arrays: NDArrays) -> None:
    """Load arrays (``state_dict`` order) into ``model``."""
    keys = list(model.state_dict().keys())
    if len(keys) != len(arrays):
        raise ValueError(f"models: {len(arrays)} arrays for {len(keys)} tensors")
    model.load_state_dict(
        {k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, arrays, strict=True)}
    )


def to_safetensors(model: nn.Module) -> bytes:
    """Serialise the model's state_dict as safetensors bytes, naming the state_dict order in
    which updates list the tensors (fedcommon.tensor_order)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    data: bytes = save_safetensors(state, metadata=tensor_order.metadata(list(state)))
    return data


def load_into(model: nn.Module, data: bytes) -> nn.Module:
    """Load safetensors bytes into ``model`` and return it."""
    model.load_state_dict(load_safetensors(data))
    return model


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
