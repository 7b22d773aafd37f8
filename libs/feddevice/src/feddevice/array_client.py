"""The built-in models' client: a PyTorch module trained on a device's examples held in memory.

What the simulator's virtual devices run (one client per device), and what a real device with
its data in arrays can run: plain minibatch SGD (FedAvg's ClientUpdate) with FedProx's
proximal term when the round asks for it, or, when the train request carries local-DP
settings, DP-SGD with Opacus at exactly those settings (the privacy service charges the device
for them, so a client that cannot honour them must not answer such a request:
``supports_local_dp`` says it can).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from feddevice.client import Config, EvaluateResult, FitResult, Parameters
from feddevice.torch_client import load_parameters, parameters_of
from feddevice.torch_training import train_local

# The config keys that carry a train request's local-DP settings (feddevice.answer.config_for).
LOCAL_DP_KEYS = (
    "local_dp.noise_multiplier",
    "local_dp.sample_rate",
    "local_dp.steps",
    "local_dp.max_grad_norm",
)


@dataclass(frozen=True)
class DpSgd:
    """DP-SGD's settings for one round, as the coordinator chose them."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float


def dp_sgd_of(config: Config) -> DpSgd | None:
    """The round's DP-SGD settings, or None when the round asks for none."""
    if not any(key in config for key in LOCAL_DP_KEYS):
        return None
    return DpSgd(
        noise_multiplier=float(config["local_dp.noise_multiplier"]),
        sample_rate=float(config["local_dp.sample_rate"]),
        steps=int(config["local_dp.steps"]),
        max_grad_norm=float(config["local_dp.max_grad_norm"]),
    )


class ArrayTorchClient:
    supports_local_dp = True

    def __init__(
        self,
        build: Callable[[], nn.Module],
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        x_test: npt.NDArray[np.float32] | None = None,
        y_test: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self.build = build
        self.x, self.y = x, y
        self.x_test, self.y_test = x_test, y_test

    def fit(self, parameters: Parameters, config: Config) -> FitResult:
        torch.set_num_threads(1)
        model = self.build()
        load_parameters(model, parameters)
        dp = dp_sgd_of(config)
        if dp is not None:
            # Imported on first use: Opacus adds almost two seconds to a process's start, and
            # only local-DP rounds need it.
            from feddevice.torch_dp import train_local_dp

            # Sampling and noise from the OS's entropy: a seeded generator would let the
            # seed's holder remove them.
            result = train_local_dp(
                model,
                self.x,
                self.y,
                settings=dp,
                learning_rate=float(config["learning_rate"]),
                sampling_generator=torch.Generator().manual_seed(secrets.randbits(63)),
                noise_generator=torch.Generator().manual_seed(secrets.randbits(63)),
            )
        else:
            result = train_local(
                model,
                self.x,
                self.y,
                epochs=int(config["local_epochs"]),
                batch_size=int(config["batch_size"]),
                learning_rate=float(config["learning_rate"]),
                seed=int(config["seed"]),
                proximal_mu=float(config.get("proximal_mu", 0.0)),
            )
        return FitResult(
            parameters_of(model),
            result.num_examples,
            {"train_loss": result.train_loss, "train_accuracy": result.train_accuracy},
        )

    def evaluate(self, parameters: Parameters, config: Config) -> EvaluateResult:
        if self.x_test is None or self.y_test is None:
            raise ValueError("ArrayTorchClient.evaluate: this client has no test data")
        torch.set_num_threads(1)
        model = self.build()
        load_parameters(model, parameters)
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(self.x_test))
            labels = torch.from_numpy(self.y_test)
            loss = float(nn.functional.cross_entropy(logits, labels).item())
            accuracy = float((logits.argmax(dim=1) == labels).float().mean().item())
        return EvaluateResult(loss, len(self.y_test), {"accuracy": accuracy})
