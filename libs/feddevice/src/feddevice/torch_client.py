"""A ready-made client for a PyTorch module: give it the module, its data loaders, an
optimiser factory and a loss, and it trains and evaluates as the task's settings say."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from feddevice import proximal
from feddevice.client import Config, EvaluateResult, FitResult, Parameters

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
OptimizerFactory = Callable[[Iterator[nn.Parameter], Config], torch.optim.Optimizer]


def sgd(parameters: Iterator[nn.Parameter], config: Config) -> torch.optim.Optimizer:
    """Plain SGD at the task's learning rate (FedAvg's ClientUpdate)."""
    return torch.optim.SGD(parameters, lr=float(config["learning_rate"]))


def parameters_of(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's state as named float32 arrays."""
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in module.state_dict().items()
    }


def load_parameters(module: nn.Module, parameters: Parameters) -> None:
    """Load named arrays into ``module``; every tensor of the module must be given."""
    module.load_state_dict(
        {name: torch.from_numpy(np.array(array)) for name, array in parameters.items()},
        strict=True,
    )


class TorchClient:
    """Train ``module`` on ``train_data`` for the round's ``local_epochs`` and evaluate it on
    ``test_data``, both iterables of (inputs, labels) batches (a DataLoader, typically).

    ``proximal_mu`` > 0 in the config adds FedProx's (mu/2)·||w - w_global||² to each batch's
    loss; the reported loss is the data loss alone.
    """

    def __init__(
        self,
        module: nn.Module,
        train_data: Batches,
        test_data: Batches | None = None,
        *,
        optimizer: OptimizerFactory = sgd,
        loss: nn.Module | None = None,
    ) -> None:
        self.module = module
        self.train_data = train_data
        self.test_data = test_data
        self.optimizer = optimizer
        self.loss = loss if loss is not None else nn.CrossEntropyLoss()

    def fit(self, parameters: Parameters, config: Config) -> FitResult:
        torch.set_num_threads(1)
        load_parameters(self.module, parameters)
        if "seed" in config:
            torch.manual_seed(int(config["seed"]))
        mu = float(config.get("proximal_mu", 0.0))
        anchor = proximal.snapshot(self.module.parameters()) if mu > 0 else None
        optimizer = self.optimizer(self.module.parameters(), config)
        self.module.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for _ in range(int(config.get("local_epochs", 1))):
            loss_sum, correct, seen = 0.0, 0, 0
            for inputs, labels in self.train_data:
                optimizer.zero_grad()
                outputs = self.module(inputs)
                loss = self.loss(outputs, labels)
                objective = loss
                if anchor is not None:
                    objective = loss + proximal.proximal_term(self.module.parameters(), anchor, mu)
                objective.backward()
                optimizer.step()
                loss_sum += float(loss.item()) * len(labels)
                correct += _correct(outputs, labels)
                seen += len(labels)
        if seen == 0:
            raise ValueError("TorchClient.fit: the training data yielded no examples")
        return FitResult(
            parameters_of(self.module),
            seen,
            {"train_loss": loss_sum / seen, "train_accuracy": correct / seen},
        )

    def evaluate(self, parameters: Parameters, config: Config) -> EvaluateResult:
        if self.test_data is None:
            raise ValueError("TorchClient.evaluate: this client has no test data")
        torch.set_num_threads(1)
        load_parameters(self.module, parameters)
        self.module.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        with torch.no_grad():
            for inputs, labels in self.test_data:
                outputs = self.module(inputs)
                loss_sum += float(self.loss(outputs, labels).item()) * len(labels)
                correct += _correct(outputs, labels)
                seen += len(labels)
        if seen == 0:
            raise ValueError("TorchClient.evaluate: the test data yielded no examples")
        return EvaluateResult(loss_sum / seen, seen, {"accuracy": correct / seen})


def _correct(outputs: torch.Tensor, labels: torch.Tensor) -> int:
    """Correct predictions of a classifier's logits (0 where the outputs are not logits)."""
    if outputs.dim() != 2 or labels.dim() != 1:
        return 0
    return int((outputs.argmax(dim=1) == labels).sum().item())
