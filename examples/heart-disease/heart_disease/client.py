"""The device app: one hospital's client for ``fedengine device run``.

    fedengine device run --app heart_disease.client:app --app-path examples/heart-disease \
        --set hospital=cleveland ...

The hospital trains on its own train split and evaluates the global model on its own test
split; nothing else of its data leaves it. Batches follow the round's ``batch_size`` and
are shuffled from the round's ``seed``, both from the task.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from feddevice.app import DeviceContext
from feddevice.client import Config, EvaluateResult, FitResult, Parameters
from feddevice.torch_client import TorchClient, sgd
from heart_disease.data import Split, hospital_split, load
from heart_disease.model import HeartModel

DEFAULT_BATCH_SIZE = 16
EVALUATION_BATCH_SIZE = 256


class HeartClient:
    """A TorchClient (SGD at the task's learning rate, cross-entropy) on one split, whose
    training loader is rebuilt at each round's ``batch_size``."""

    def __init__(self, split: Split, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.train = TensorDataset(torch.from_numpy(split.x_train), torch.from_numpy(split.y_train))
        test = TensorDataset(torch.from_numpy(split.x_test), torch.from_numpy(split.y_test))
        self.batch_size = batch_size
        self.torch_client = TorchClient(
            HeartModel(),
            self._loader(batch_size),
            DataLoader(test, batch_size=EVALUATION_BATCH_SIZE),
            optimizer=sgd,
            loss=nn.CrossEntropyLoss(),
        )

    def _loader(self, batch_size: int) -> DataLoader[tuple[torch.Tensor, ...]]:
        # No generator of its own: the shuffle draws from torch's global generator, which
        # TorchClient.fit seeds with the round's seed.
        return DataLoader(self.train, batch_size=batch_size, shuffle=True)

    def fit(self, parameters: Parameters, config: Config) -> FitResult:
        batch_size = int(config.get("batch_size", self.batch_size))
        self.torch_client.train_data = self._loader(batch_size)
        return self.torch_client.fit(parameters, config)

    def evaluate(self, parameters: Parameters, config: Config) -> EvaluateResult:
        return self.torch_client.evaluate(parameters, config)


def app(context: DeviceContext) -> HeartClient:
    """The factory ``--app heart_disease.client:app`` names. Settings: ``hospital`` (required:
    cleveland, hungary, switzerland or va) and ``batch_size`` (used only when a round's config
    names none)."""
    hospital = context.settings.get("hospital")
    if hospital is None:
        raise ValueError("heart_disease.client: --set hospital=<cleveland|hungary|switzerland|va>")
    batch_size = int(context.settings.get("batch_size", str(DEFAULT_BATCH_SIZE)))
    return HeartClient(hospital_split(load(), hospital), batch_size=batch_size)
