"""A PyTorch client for FedEngine's device runtime: an MLP on one share of scikit-learn's digits.

Run one device per share (see README.md):

    fedengine device run --app digits_client:make_client --app-path examples/pytorch-digits \
        --set share=0 --set shares=4 ...

The model's tensor names and shapes match the task's built-in MLP ("net.1.weight", ...), since
the task starts from that model; with a model of your own, upload it and name yours alike.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from feddevice.app import DeviceContext
from feddevice.torch_client import TorchClient


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.net(x)
        return result


def my_share(share: int, shares: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """This device's examples: an IID share of the digits' training split (pixels / 16)."""
    features, labels = load_digits(return_X_y=True)
    x = (features.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    # The same split as the platform's central evaluation, so that no device holds test data.
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    order = np.random.default_rng(seed).permutation(len(x_train))
    mine = np.array_split(order, shares)[share]
    return x_train[mine], y_train[mine]


def make_client(context: DeviceContext) -> TorchClient:
    share = int(context.settings.get("share", "0"))
    shares = int(context.settings.get("shares", "1"))
    batch_size = int(context.settings.get("batch_size", "16"))
    x, y = my_share(share, shares)
    held_out = max(1, len(x) // 5)
    train = TensorDataset(torch.from_numpy(x[held_out:]), torch.from_numpy(y[held_out:]))
    test = TensorDataset(torch.from_numpy(x[:held_out]), torch.from_numpy(y[:held_out]))
    generator = torch.Generator().manual_seed(share)
    return TorchClient(
        DigitsMLP(),
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        DataLoader(test, batch_size=256),
    )
