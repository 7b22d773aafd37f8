"""Local training on a device's own partition: plain minibatch SGD (FedAvg's ClientUpdate), with
FedProx's proximal term when the train request asks for one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedcommon import models
from fedcommon.arrays import NDArrays
from feddevice import proximal


@dataclass(frozen=True)
class LocalResult:
    delta: NDArrays
    num_examples: int
    train_loss: float
    train_accuracy: float


def train_local(
    model: nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> LocalResult:
    """Train ``model`` in place and return the weight delta and the last epoch's metrics.

    ``proximal_mu`` > 0 adds FedProx's (μ/2)·‖w - wᵗ‖² to each batch's loss (wᵗ: the model the
    round started from); the reported loss is the data loss alone, comparable across tasks.
    """
    if len(x) == 0:
        raise ValueError("train_local: the partition is empty")
    start = models.get_arrays(model)
    anchor = proximal.snapshot(model.parameters()) if proximal_mu > 0 else None
    generator = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    loss_sum, correct = 0.0, 0
    for _ in range(epochs):
        loss_sum, correct = 0.0, 0
        order = torch.randperm(len(inputs), generator=generator)
        for begin in range(0, len(order), batch_size):
            index = order[begin : begin + batch_size]
            optimizer.zero_grad()
            logits = model(inputs[index])
            loss = nn.functional.cross_entropy(logits, labels[index])
            objective = loss
            if anchor is not None:
                objective = loss + proximal.proximal_term(model.parameters(), anchor, proximal_mu)
            objective.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss_sum += float(loss.item()) * len(index)
            correct += int((logits.argmax(dim=1) == labels[index]).sum().item())
    end = models.get_arrays(model)
    delta: NDArrays = [np.subtract(after, before) for after, before in zip(end, start, strict=True)]
    return LocalResult(delta, len(inputs), loss_sum / len(inputs), correct / len(inputs))
