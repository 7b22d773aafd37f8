"""Local DP-SGD on a device's own partition, with Opacus (issue 9, local DP).

Paper: Abadi et al. 2016, "Deep Learning with Differential Privacy",
https://arxiv.org/abs/1607.00133 (Algorithm 1). Each step draws a Poisson sample of the
partition (every example independently with probability q: Opacus's ``DPDataLoader``),
computes each example's gradient (``GradSampleModule``), clips it to L2 norm C, sums, adds
Gaussian noise of std z·C and divides by the expected batch q·n (``DPOptimizer``). All of
q, z, C and the number of steps are the coordinator's (``TrainRequested.local_dp``): the
privacy service accounts the device's ε from those same numbers, never from Opacus's own
accountant or from anything the device reports.

What the device sends back must not leak more than the update: the loss and accuracy it
measured on its data are not reported (zeros); the example count is (FedAvg weighs by it),
and is not covered by the guarantee. Randomness comes in as two torch generators, one for the
sampling and one for the noise: seeded in tests, from the operating system's entropy on a
device.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import TensorDataset

from fedcommon import models
from fedcommon.arrays import NDArrays
from feddevice.torch_training import LocalResult

logger = logging.getLogger(__name__)


class DpSgdSettings(Protocol):
    """What DP-SGD needs of the coordinator's settings (LocalDp has these, among others)."""

    @property
    def noise_multiplier(self) -> float: ...

    @property
    def sample_rate(self) -> float: ...

    @property
    def steps(self) -> int: ...

    @property
    def max_grad_norm(self) -> float: ...


def private_loader(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    sample_rate: float,
    generator: torch.Generator,
) -> DPDataLoader:
    """Return Opacus's Poisson-sampling loader over the partition at rate ``sample_rate``."""
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return DPDataLoader(dataset, sample_rate=sample_rate, generator=generator)


def train_local_dp(
    model: nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    settings: DpSgdSettings,
    learning_rate: float,
    sampling_generator: torch.Generator,
    noise_generator: torch.Generator,
) -> LocalResult:
    """Train ``model`` in place with ``settings.steps`` DP-SGD steps; return the weight delta.

    Raises ``ValueError`` for an empty partition.
    """
    if len(x) == 0:
        raise ValueError("train_local_dp: the partition is empty")
    start = models.get_arrays(model)
    loader = private_loader(x, y, sample_rate=settings.sample_rate, generator=sampling_generator)
    private_model = GradSampleModule(model)
    optimizer = DPOptimizer(
        torch.optim.SGD(private_model.parameters(), lr=learning_rate),
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        expected_batch_size=max(1, round(settings.sample_rate * len(x))),
        generator=noise_generator,
    )
    private_model.train()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    with warnings.catch_warnings():
        # Opacus warns that a generator-seeded noise is not cryptographically secure; the
        # caller seeds it from the OS's entropy on a device (and with a constant in tests).
        warnings.simplefilter("ignore", UserWarning)
        for inputs, labels in itertools.islice(batches, settings.steps):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(private_model(inputs), labels)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    private_model.remove_hooks()
    end = models.get_arrays(model)
    delta: NDArrays = [np.subtract(after, before) for after, before in zip(end, start, strict=True)]
    return LocalResult(delta, len(x), 0.0, 0.0)
